#!/usr/bin/env bash
# Fetch the jars of an Apache Kafka broker (and its runtime dependencies) from Maven
# Central into the streampulse cache, for the integration tests' real broker:
#
#   ${STREAMPULSE_CACHE_DIR:-$HOME/.cache/streampulse}/kafka-4.3.1/libs/*.jar
#
# Idempotent: a marker file, written only once every jar is in place, makes a second
# run a fast no-op. The marker records a hash of pom.xml, so editing the pom (another
# Kafka version, another dependency) fetches again. Needs java and mvn on PATH;
# uses the default Maven local repository (~/.m2).
set -euo pipefail

KAFKA_VERSION="4.3.1"  # keep in step with pom.xml and tests/services/apache_kafka.py

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="$here/pom.xml"
cache_root="${STREAMPULSE_CACHE_DIR:-$HOME/.cache/streampulse}"
dest="$cache_root/kafka-$KAFKA_VERSION"
libs="$dest/libs"
marker="$dest/.fetched"

say() { echo "fetch-kafka: $*"; }
die() { echo "fetch-kafka: ERROR: $*" >&2; exit 1; }

pom_hash="$(sha256sum "$pom" | cut -d' ' -f1)" || die "cannot read $pom"

is_complete() {
    [[ -f "$marker" && -d "$libs" ]] && [[ "$(head -n1 "$marker")" == "pom-sha256 $pom_hash" ]]
}

if is_complete; then
    say "Kafka $KAFKA_VERSION jars already in $libs (marker $marker); nothing to do."
    exit 0
fi

command -v java >/dev/null 2>&1 || die "java not found on PATH; install a JDK 17+ (e.g. apt-get install -y openjdk-17-jdk-headless)."
command -v mvn >/dev/null 2>&1 || die "mvn not found on PATH; install Maven (e.g. apt-get install -y maven)."

mkdir -p "$cache_root" || die "cannot create cache directory $cache_root"

# Two fetches at once (say, CI and a developer's shell) must not interleave their moves.
exec 9>"$cache_root/.kafka-$KAFKA_VERSION.lock"
flock 9 || die "cannot lock $cache_root/.kafka-$KAFKA_VERSION.lock"
if is_complete; then
    say "Kafka $KAFKA_VERSION jars were fetched by another run into $libs; nothing to do."
    exit 0
fi

# Download into a scratch directory first, so an interrupted run never leaves a
# half-filled libs/ that looks usable.
tmp="$(mktemp -d "$cache_root/.kafka-$KAFKA_VERSION.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

say "fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its runtime dependencies from Maven Central"
say "  (mvn dependency:copy-dependencies -f $pom; Maven local repository: ~/.m2)"
start_s="$(date +%s)"
# -U: re-ask Central for artifacts that a failed earlier run recorded as missing.
# jansi.noreset: Debian's Maven 3.8 prints bare ANSI reset codes even in batch mode.
if ! MAVEN_OPTS="${MAVEN_OPTS:-} -Djansi.noreset=true" \
        mvn -q -B -U -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
        -DincludeScope=runtime \
        -DoutputDirectory="$tmp/libs"; then
    die "mvn dependency:copy-dependencies failed (see the Maven output above); is Maven Central reachable?"
fi

# A sanity check that the jars the tests start are really there.
for jar in "kafka_2.13-$KAFKA_VERSION.jar" "kafka-clients-$KAFKA_VERSION.jar" "kafka-server-$KAFKA_VERSION.jar"; do
    [[ -f "$tmp/libs/$jar" ]] || die "mvn finished but $jar is missing from the download"
done
ls "$tmp/libs"/log4j-slf4j-impl-*.jar >/dev/null 2>&1 || die "mvn finished but the log4j-slf4j-impl binding is missing"

mkdir -p "$dest"
rm -rf "$libs" "$marker"
mv "$tmp/libs" "$libs"
jar_count="$(find "$libs" -maxdepth 1 -name '*.jar' | wc -l)"
{
    echo "pom-sha256 $pom_hash"
    echo "kafka $KAFKA_VERSION"
    echo "jars $jar_count"
} > "$marker.tmp"
mv "$marker.tmp" "$marker"

size="$(du -sh "$libs" | cut -f1)"
say "done: $jar_count jars ($size) in $libs after $(( $(date +%s) - start_s )) s"
