# shadowproxy as a container: multi-stage, slim, non-root, uvloop included.
#   docker build -t shadowproxy .
#   docker run -p 8080:8080 -v $PWD/config:/etc/shadowproxy shadowproxy
# The config is mounted at /etc/shadowproxy (main file shadowproxy.yaml, routes in routes/);
# recordings go to /var/lib/shadowproxy unless the config says otherwise.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[report,compression,grpc]'

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --home-dir /var/lib/shadowproxy --create-home shadowproxy
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels 'shadowproxy-ml[report,compression,grpc]' \
    && rm -rf /wheels
USER 10001
WORKDIR /var/lib/shadowproxy
VOLUME ["/var/lib/shadowproxy"]
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
ENTRYPOINT ["shadowproxy"]
CMD ["serve", "--config", "/etc/shadowproxy/shadowproxy.yaml", "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:9090"]
