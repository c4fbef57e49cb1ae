# The TCMS image: the `tcms` command (gateway, TSS, TTP, DC), nothing else.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends openssl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/tcms --create-home tcms
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY tcms ./tcms
COPY gateway ./gateway
COPY tsrg ./tsrg
COPY tss ./tss
COPY ttp ./ttp
COPY dc ./dc
RUN pip install --no-cache-dir .
COPY deploy/init.sh /usr/local/bin/tcms-init
# the state volume is mounted here: created owned by tcms, so a new volume is too
RUN mkdir -p /var/lib/tcms/var && chown tcms:tcms /var/lib/tcms/var
USER tcms
WORKDIR /var/lib/tcms
ENTRYPOINT ["tcms"]
CMD ["--help"]
