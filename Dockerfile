# CPU image of dagan-tf; the same install as the README.  Entrypoint: the dagan-tf CLI.
FROM python:3.11-slim
WORKDIR /opt/dagan-tf
COPY setup.cfg pyproject.toml README.md ./
COPY dagan_tf ./dagan_tf
COPY configs ./configs
RUN pip install --no-cache-dir ".[dicom,demo]"
ENTRYPOINT ["dagan-tf"]
CMD ["--help"]
