# One image for every role: `wallet processor`, `wallet migrate`, `wallet topics`, ...
# Build stage makes wheels; the final stage has no compiler and runs as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY wallet ./wallet
COPY schemas ./schemas
COPY commands ./commands
COPY processor ./processor
COPY projections ./projections
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home wallet
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER wallet
WORKDIR /tmp
ENV WALLET_LOG_FORMAT=json
ENTRYPOINT ["wallet"]
CMD ["processor"]
