# syntax=docker/dockerfile:1
# Build: docker build -t extauthz .
# Run:   docker run -p 9191:9191 -v $PWD/config.yaml:/etc/extauthz/config.yaml:ro extauthz
FROM python:3.12-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY extauthz ./extauthz
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.12-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home extauthz
COPY --from=build /install /usr/local
USER 10001
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
EXPOSE 9191 9192
ENTRYPOINT ["extauthz"]
CMD ["serve", "--config", "/etc/extauthz/config.yaml"]
