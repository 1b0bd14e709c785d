# deploy.mk - install audiosocket-gw's Asterisk integration (included by Makefile).
#
#   sudo make deploy                 # live system: files, #include, systemd unit, reloads
#   make deploy DESTDIR=/tmp/stage   # staging tree (no reloads)
#   make deploy DRY_RUN=1            # print what would be done, touch nothing
#   sudo make undeploy               # remove our files and the #include line
#
# Paths: ASTERISK_ETC, AGI_DIR, PREFIX (the gateway's virtualenv lives in
# $(PREFIX)/.venv: by default this checkout's .venv, built by `make venv`),
# AIGW_ETC (settings), AIGW_STATE (data), SYSTEMD_DIR, AIGW_USER.
# GATEWAY_PYTHON: the python of the gateway's virtualenv (AGI shebang, systemd unit).
# ASTERISK: the asterisk binary for 'dialplan reload' (name or path); ASTERISK_CONFIG:
# the asterisk.conf of the instance to reload (passed as -C; empty: the default).
# systemctl daemon-reload runs only when SYSTEMD_DIR is a systemd unit directory
# (/etc/systemd/system, /usr/lib/systemd/system...), never for a unit staged elsewhere.
# The work is done by scripts/deploy.py: see its docstring for the rules (backups,
# manifest, idempotence).

DESTDIR      ?=
PREFIX       ?= $(CURDIR)
ASTERISK_ETC ?= /etc/asterisk
AGI_DIR      ?= /var/lib/asterisk/agi-bin
AIGW_ETC     ?= /etc/audiosocket-gw
AIGW_STATE   ?= /var/lib/audiosocket-gw
SYSTEMD_DIR  ?= /etc/systemd/system
AIGW_USER    ?= asterisk
GATEWAY_PYTHON ?= $(PREFIX)/.venv/bin/python
ASTERISK     ?= asterisk
ASTERISK_CONFIG ?=
DRY_RUN      ?=
DEPLOY_PY    ?= python3

DEPLOY_ARGS = --destdir '$(DESTDIR)' --asterisk-etc '$(ASTERISK_ETC)' \
	--agi-dir '$(AGI_DIR)' --aigw-etc '$(AIGW_ETC)' --state-dir '$(AIGW_STATE)' \
	--systemd-dir '$(SYSTEMD_DIR)' --python '$(GATEWAY_PYTHON)' --user '$(AIGW_USER)' \
	--asterisk '$(ASTERISK)' --asterisk-config '$(ASTERISK_CONFIG)' \
	$(if $(filter 1 yes true,$(DRY_RUN)),--dry-run)

.PHONY: deploy undeploy

## deploy: install the dialplan include, AGI script, samples, systemd unit; reload
deploy:
	@$(DEPLOY_PY) $(CURDIR)/scripts/deploy.py deploy $(DEPLOY_ARGS)

## undeploy: remove what deploy installed (samples with your settings are kept)
undeploy:
	@$(DEPLOY_PY) $(CURDIR)/scripts/deploy.py undeploy $(DEPLOY_ARGS)
