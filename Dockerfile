# karma-trio in a container (docs/operations.md, "Containers"). From a checkout:
#   docker build -t karma-trio .
#   docker run -d -p 127.0.0.1:8080:8080 -v karma-data:/var/lib/karma-trio --stop-timeout 120 karma-trio
# The suite replays these steps without a container engine (tests/process/test_packaging.py).

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY karma ./karma
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# a fixed uid, so a volume's files keep one owner across image rebuilds
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/karma-trio \
        --shell /usr/sbin/nologin karma \
    && mkdir -p /var/lib/karma-trio \
    && chown karma:karma /var/lib/karma-trio \
    && chmod 0750 /var/lib/karma-trio
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels

# Every option is also an environment variable (docs/reference/configuration.md); override
# them with `docker run -e`. Inside a container the ports must listen on every interface;
# publish them on the host's loopback unless clients are remote (and then set a token).
ENV KARMA_HOST=0.0.0.0 \
    KARMA_PORT=8080 \
    KARMA_DUMP_DIR=/var/lib/karma-trio \
    KARMA_METRICS_HOST=0.0.0.0 \
    KARMA_METRICS_PORT=9108 \
    KARMA_SNAPSHOT_INTERVAL_SECONDS=3600 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/karma-trio"]
EXPOSE 8080 9108
# numeric, so Kubernetes (runAsNonRoot) can tell it is not root
USER 10001:10001
WORKDIR /var/lib/karma-trio

# /healthz on the metrics port: the process is up and serving (restore may take a while on a
# large directory, hence the start period); https when KARMA_TLS_CERT is set (docs/security.md:
# loopback, so the certificate's name is not checked)
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request; tls = bool(os.environ.get('KARMA_TLS_CERT')); urllib.request.urlopen(('https' if tls else 'http') + '://127.0.0.1:%s/healthz' % os.environ['KARMA_METRICS_PORT'], timeout=4, context=ssl._create_unverified_context() if tls else None)"]

# SIGTERM drains connections, takes a final snapshot and exits 0: give it time to
# (docker run --stop-timeout, terminationGracePeriodSeconds)
STOPSIGNAL SIGTERM
CMD ["karma-trio", "serve"]
