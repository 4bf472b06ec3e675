"""Faust glue: the app, its topics, tables and agents. Decode, call the service, publish."""
