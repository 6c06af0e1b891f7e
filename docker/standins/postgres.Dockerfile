# A stand-in for the official postgres image where no registry is reachable: Debian's PostgreSQL 15 on the
# local base (docker/base.sh), honouring the official image's POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB and
# PGPORT. Built with the host's network (apt reaches the Debian mirror).
ARG BASE=mobitune-base:bookworm
FROM ${BASE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER postgres
ENV PGDATA=/var/lib/postgresql/data PGPORT=5432
CMD ["bash", "/usr/local/bin/postgres-entrypoint.sh"]
