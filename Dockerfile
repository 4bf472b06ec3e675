FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY nexus_streams ./nexus_streams
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/nexus nexus \
    && mkdir -p /var/lib/nexus && chown nexus /var/lib/nexus
USER nexus
ENV NEXUS_DATA_DIR=/var/lib/nexus
EXPOSE 9464
CMD ["nexus-streams", "worker"]
