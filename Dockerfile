FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
COPY schemas ./schemas
RUN pip install --no-cache-dir -e .
ENV MFA_HOST=0.0.0.0
EXPOSE 8081 8082 8083 8084 2525
CMD ["mfa", "run", "all"]
