# Stand-in for redis:7 where no registry serves it: Debian's redis-server 7.0, started as
# the official image starts it (no config file: protected mode off).
FROM stoic-check/debian:bookworm
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
