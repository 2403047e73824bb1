#!/usr/bin/env bash
# Prepares a RabbitMQ node for paypush (idempotent):
#  - enables rabbitmq_web_stomp (STOMP over WebSocket, port 15674);
#  - creates the browser user (STOMP_LOGIN, default webguest) whose permissions
#    allow reading the paynotify exchange and its own stomp-subscription-*
#    queues only: it can neither publish a fake "paid" nor declare anything else.
# The password is STOMP_PASSCODE, else the one paypush generated in
# $VAR_DIR/stomp_passcode (sandbox mode), created here if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VAR_DIR=${VAR_DIR:-var}
LOGIN=${STOMP_LOGIN:-webguest}
VHOST=${RABBITMQ_VHOST:-/}

if [[ -z "${STOMP_PASSCODE:-}" ]]; then
  mkdir -p "$VAR_DIR"
  if [[ ! -s "$VAR_DIR/stomp_passcode" ]]; then
    (umask 077; head -c 32 /dev/urandom | base64 | tr -d '/+=\n' | head -c 43 > "$VAR_DIR/stomp_passcode")
  fi
  STOMP_PASSCODE=$(cat "$VAR_DIR/stomp_passcode")
fi

if ! rabbitmq-plugins -q list -e rabbitmq_web_stomp 2>/dev/null | grep -q rabbitmq_web_stomp; then
  rabbitmq-plugins -q enable rabbitmq_web_stomp >/dev/null
fi

if rabbitmqctl -q list_users 2>/dev/null | awk '{print $1}' | grep -qx "$LOGIN"; then
  rabbitmqctl -q change_password "$LOGIN" "$STOMP_PASSCODE" >/dev/null
else
  rabbitmqctl -q add_user "$LOGIN" "$STOMP_PASSCODE" >/dev/null
fi
# configure: only its own subscription queues (Web STOMP names them
# stomp-subscription-<random>); write: those queues only (binding them needs
# write on the queue; publishing would need write on an exchange); read: the
# paynotify exchange and its own queues.
rabbitmqctl -q set_permissions -p "$VHOST" "$LOGIN" \
  '^stomp-subscription-.*' '^stomp-subscription-.*' '^(paynotify|stomp-subscription-.*)$' >/dev/null
echo "rabbitmq-setup: web_stomp enabled, user $LOGIN ready on vhost $VHOST"
