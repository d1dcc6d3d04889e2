# The demo service: the fusebox executable on the official Swift image, with hiredis.
# docker-compose.yml runs three replicas of it against one Redis.
FROM swift:6.2-jammy AS build
RUN apt-get update && apt-get install -y --no-install-recommends libhiredis-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
COPY lua ./lua
COPY Tests ./Tests
RUN swift build -c release --product fusebox && cp "$(swift build -c release --show-bin-path)/fusebox" /usr/local/bin/fusebox

FROM swift:6.2-jammy-slim
RUN apt-get update && apt-get install -y --no-install-recommends libhiredis0.14 redis-tools && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/fusebox /usr/local/bin/fusebox
ENTRYPOINT ["fusebox"]
CMD ["demo-instance", "--forever", "--adapter", "distributed"]
