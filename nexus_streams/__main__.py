from nexus_streams.cli import main

main()
