#!/bin/sh
# The sluice-busypoll target of chat-rate-2000 (report.sh): sluice-busypoll.yaml on 15501/15500.
exec "$(dirname "$0")/start-sluice.sh" sluice-busypoll.yaml 15501 15500 "${SLUICE_BUSYPOLL_PORT:-15501}" "${SLUICE_BUSYPOLL_ADMIN_PORT:-15500}"
