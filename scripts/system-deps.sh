#!/bin/sh
# Install what pip cannot: a Java runtime (17 or newer) for Kafka and Spark, and kcat,
# the command-line Kafka client the tests use to read the course's topics.
# Only as root with apt-get; anywhere else it says what is missing and carries on.
set -u

need=""
java_ok() {
    command -v java >/dev/null 2>&1 || return 1
    major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
    [ -n "$major" ] && [ "$major" -ge 17 ]
}
java_ok || need="$need openjdk-17-jre-headless"
command -v kcat >/dev/null 2>&1 || need="$need kcat"

[ -z "$need" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing:$need"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need
else
    echo "not installed:$need"
    echo "  Java 17+ is needed for the Kafka and Spark stages (file mode works without it);"
    echo "  install it with your package manager, e.g. 'sudo apt-get install$need',"
    echo "  or with conda: 'conda env create -f environment.yml'."
fi
exit 0
