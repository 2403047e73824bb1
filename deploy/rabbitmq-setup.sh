#!/usr/bin/env bash
# Prepares a RabbitMQ node for paypush's STOMP route. Idempotent: run it again
# at will (after an upgrade, with new limits, or to change the passcode).
#  - enables rabbitmq_web_stomp (STOMP over WebSocket, port 15674);
#  - creates the browser user (STOMP_LOGIN, default webguest) on the vhost
#    paypush publishes to. Every shopper's page gets this user's passcode, so
#    it is treated as public and may do only this: bind a queue of its own to
#    one exact key order.<push_token> on paynotify. It cannot publish, cannot
#    bind wildcards (topic permissions), and cannot hoard: its connections and
#    channels are capped (user limits) and every stomp-subscription-* queue
#    expires when unused and holds a bounded number of messages (policy).
#
# Environment:
#   AMQP_URL          paypush's broker URL; the vhost is its path (%2F is "/",
#                     empty is "/"), so pages are let in where events go.
#   RABBITMQ_VHOST    the vhost, for when AMQP_URL is not at hand; if both are
#                     given they must name the same vhost. Default "/".
#   STOMP_LOGIN       the browser user (default webguest).
#   STOMP_PASSCODE    its password; else $VAR_DIR/stomp_passcode (created here
#                     if missing, as paypush does in sandbox mode).
#   STOMP_MAX_CONNECTIONS  the browser user's connections, all pages together:
#                     size it to the pay pages waiting at once (default 10000).
#                     Each is a socket of the RabbitMQ node, as is each paypush
#                     process's one AMQP connection: the node's open-file limit
#                     bounds them all (RabbitMQ 3.x keeps ~10% of it for its own
#                     files; `rabbitmq-diagnostics status` shows the sockets it
#                     allows). Where no process may open more than 20,000 files,
#                     one node holds at most ~18,000 STOMP pages: send the rest
#                     over paypush's own sockets (PUSH_ROUTE=ws) or to more nodes.
#                     This script warns when the node allows fewer sockets.
#   STOMP_MAX_CHANNELS     its channels, all connections together; a page uses
#                     one (default STOMP_MAX_CONNECTIONS).
#   STOMP_QUEUE_EXPIRES_MS  a stomp-subscription-* queue with no consumer is
#                     deleted after this long (default 60000). Pages' queues
#                     always have a consumer and go with their connection.
#   STOMP_QUEUE_MAX_LENGTH  messages a stomp-subscription-* queue may hold,
#                     oldest dropped first (default 100; a page hears a few).
#   STOMP_POLICY_PRIORITY   priority of the policy (default 10), see below.
set -euo pipefail
cd "$(dirname "$0")/.."

VAR_DIR=${VAR_DIR:-var}
LOGIN=${STOMP_LOGIN:-webguest}
MAX_CONNECTIONS=${STOMP_MAX_CONNECTIONS:-10000}
MAX_CHANNELS=${STOMP_MAX_CHANNELS:-$MAX_CONNECTIONS}
QUEUE_EXPIRES_MS=${STOMP_QUEUE_EXPIRES_MS:-60000}
QUEUE_MAX_LENGTH=${STOMP_QUEUE_MAX_LENGTH:-100}
POLICY_PRIORITY=${STOMP_POLICY_PRIORITY:-10}
POLICY=paypush-stomp-subscriptions

fail() { echo "rabbitmq-setup: $*" >&2; exit 2; }

for name in MAX_CONNECTIONS MAX_CHANNELS QUEUE_EXPIRES_MS QUEUE_MAX_LENGTH POLICY_PRIORITY; do
  [[ ${!name} =~ ^[0-9]+$ ]] || fail "STOMP_$name must be a whole number, got '${!name}'"
done
(( QUEUE_EXPIRES_MS >= 1 )) || fail "STOMP_QUEUE_EXPIRES_MS must be at least 1"

# The vhost of an amqp:// URL as paypush's client reads it: the path without its
# leading "/", percent-decoded; no path or an empty one is the default vhost "/".
url_vhost() {
  local rest=${1#*://}
  rest=${rest%%[?#]*}
  [[ $rest == */* ]] || { echo /; return; }
  local path=${rest#*/}
  [[ -n $path ]] || { echo /; return; }
  printf '%b\n' "${path//%/\\x}"
}

if [[ -n "${AMQP_URL:-}" ]]; then
  VHOST=$(url_vhost "$AMQP_URL")
  if [[ -n "${RABBITMQ_VHOST:-}" && "$RABBITMQ_VHOST" != "$VHOST" ]]; then
    fail "RABBITMQ_VHOST is '$RABBITMQ_VHOST' but AMQP_URL names vhost '$VHOST': set one of them"
  fi
else
  VHOST=${RABBITMQ_VHOST:-/}
fi

if [[ -z "${STOMP_PASSCODE:-}" ]]; then
  mkdir -p "$VAR_DIR"
  if [[ ! -s "$VAR_DIR/stomp_passcode" ]]; then
    (umask 077; head -c 32 /dev/urandom | base64 | tr -d '/+=\n' | head -c 43 > "$VAR_DIR/stomp_passcode")
  fi
  STOMP_PASSCODE=$(cat "$VAR_DIR/stomp_passcode")
fi

if ! rabbitmq-plugins -q is_enabled rabbitmq_web_stomp >/dev/null 2>&1; then
  rabbitmq-plugins -q enable rabbitmq_web_stomp >/dev/null
fi

if rabbitmqctl -q list_users 2>/dev/null | awk '{print $1}' | grep -qxF "$LOGIN"; then
  rabbitmqctl -q change_password -- "$LOGIN" "$STOMP_PASSCODE" >/dev/null  # --: a passcode may start with "-"
else
  rabbitmqctl -q add_user -- "$LOGIN" "$STOMP_PASSCODE" >/dev/null
fi
# configure: only its own subscription queues (Web STOMP names them
# stomp-subscription-<random>); write: those queues only (binding them needs
# write on the queue; publishing would need write on an exchange); read: the
# paynotify exchange and its own queues.
rabbitmqctl -q set_permissions -p "$VHOST" "$LOGIN" \
  '^stomp-subscription-.*' '^stomp-subscription-.*' '^(paynotify|stomp-subscription-.*)$' >/dev/null
# Topic permissions on paynotify: the read regex is checked against the binding
# key of every queue.bind/exchange.bind (STOMP SUBSCRIBE binds one), so only an
# exact order.<push_token> (server/push_tokens.py: 32 lowercase hex digits) is
# accepted and "#", "*" or "order.#" never are; \z rather than $, which would also
# let a trailing newline through. The write regex (publishing) matches nothing.
rabbitmqctl -q set_topic_permissions -p "$VHOST" "$LOGIN" paynotify \
  '(?!)' '^order\.[0-9a-f]{32}\z' >/dev/null
# RabbitMQ has no per-user queue limit (only connections and channels); the
# queues the user can keep are bounded by the policy below instead.
rabbitmqctl -q set_user_limits "$LOGIN" \
  "{\"max-connections\": $MAX_CONNECTIONS, \"max-channels\": $MAX_CHANNELS}" >/dev/null
# A limit the node cannot reach is a warning, not a refusal: the node's
# open-file limit is set where it runs (ulimit, LimitNOFILE, compose ulimits),
# and may be raised after this script. An older node without JSON status is
# not checked.
status=$(rabbitmq-diagnostics -q status --formatter json 2>/dev/null) || status=""
sockets=$(grep -o '"sockets_limit":[0-9]*' <<<"$status" || grep -o '"total_limit":[0-9]*' <<<"$status" || true)
sockets=${sockets##*:}
if [[ -n $sockets ]] && (( MAX_CONNECTIONS >= sockets )); then
  echo "rabbitmq-setup: warning: STOMP_MAX_CONNECTIONS is $MAX_CONNECTIONS but the RabbitMQ node allows" \
    "$sockets sockets in all (from its open-file limit), paypush's own connections among them: pages" \
    "beyond that are refused; raise the node's open-file limit or lower STOMP_MAX_CONNECTIONS" >&2
fi
# Any stomp-subscription-* queue, including a durable one declared over AMQP,
# disappears once unused for QUEUE_EXPIRES_MS and keeps the newest
# QUEUE_MAX_LENGTH messages; drop-head, so a full queue never refuses (nacks)
# paypush's publish. Only one policy applies to a queue (the highest priority),
# so the same bounds are also set as an operator policy, which RabbitMQ merges
# with whatever policy wins (the lower value counts): they hold even if another
# application's policy outranks this one.
rabbitmqctl -q set_policy -p "$VHOST" --priority "$POLICY_PRIORITY" --apply-to queues "$POLICY" \
  '^stomp-subscription-' \
  "{\"expires\": $QUEUE_EXPIRES_MS, \"max-length\": $QUEUE_MAX_LENGTH, \"overflow\": \"drop-head\"}" >/dev/null
rabbitmqctl -q set_operator_policy -p "$VHOST" --priority "$POLICY_PRIORITY" --apply-to queues "$POLICY" \
  '^stomp-subscription-' \
  "{\"expires\": $QUEUE_EXPIRES_MS, \"max-length\": $QUEUE_MAX_LENGTH}" >/dev/null
echo "rabbitmq-setup: web_stomp enabled, user $LOGIN ready on vhost $VHOST" \
  "(max $MAX_CONNECTIONS connections; subscription queues expire after ${QUEUE_EXPIRES_MS} ms unused," \
  "hold at most $QUEUE_MAX_LENGTH messages)"
