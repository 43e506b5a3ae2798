#!/bin/bash
# Kafka's storage tool (random-uuid, format, info) with the image's classpath.
exec java -Xmx256m -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
  -cp '/opt/kafka/libs/*' kafka.tools.StorageTool "$@"
