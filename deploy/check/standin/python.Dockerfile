# Stand-in for python:3.11-slim where no registry serves it: Debian's Python 3.11 in a
# venv at /usr/local, so that `python` and `pip` are on PATH as in the official image,
# with its C headers (python3-dev), which the official image has too (deploy/Dockerfile's
# build stage compiles the C span encoder against them).
# Extra CA certificates in this directory (*.crt, copied by run.sh from the host) are
# trusted, for machines that reach PyPI through a proxy with its own CA.
FROM stoic-check/debian:bookworm
COPY . /tmp/standin/
RUN cp /tmp/standin/*.crt /usr/local/share/ca-certificates/ 2>/dev/null; \
    update-ca-certificates >/dev/null \
    && apt-get update -q && apt-get install -y -q --no-install-recommends python3-dev >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > /etc/pip.conf \
    && python3 -m venv /usr/local && /usr/local/bin/python -m pip --version \
    && rm -rf /tmp/standin
CMD ["python3"]
