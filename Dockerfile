# One image for every service of docker-compose.yml: the package installed as pip installs its wheel.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY schemas ./schemas
RUN pip install --no-cache-dir . && rm -rf /src \
    && useradd --system --home-dir /var/lib/mfa --create-home mfa
# Runs from its own folder: nothing is read from a checkout (the embedded mail sink, if used, writes var/mail here).
WORKDIR /var/lib/mfa
USER mfa
ENV MFA_HOST=0.0.0.0
EXPOSE 8081 8082 8083 8084 8085 2525
CMD ["mfa", "run", "all"]
