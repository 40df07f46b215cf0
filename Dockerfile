# One image for every role: `wallet processor`, `wallet projector`, `wallet api`,
# `wallet migrate`, `wallet topics`, and the operator commands (`wallet status`, ...).
# The build stage makes wheels; the final stage has no compiler, no pip cache and runs as a
# non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY foundation ./foundation
COPY schemas ./schemas
COPY ledger ./ledger
COPY storage ./storage
COPY messaging ./messaging
COPY processor ./processor
COPY projections ./projections
COPY commands ./commands
COPY wallet ./wallet
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home wallet
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /tmp
ENV WALLET_LOG_FORMAT=json
# 8080: the API (WALLET_API_PORT); 9100: /metrics and /health of a processor or projector
# (WALLET_METRICS_PORT, off unless set).
EXPOSE 8080 9100
# Every role answers /health: the processor and projector on their metrics port, the API on
# its own. `wallet healthcheck` picks the port from the same settings the role reads.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["wallet", "healthcheck", "--timeout", "4"]
ENTRYPOINT ["wallet"]
CMD ["processor"]
