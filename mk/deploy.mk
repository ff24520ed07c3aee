# make deploy SITE=frontier: render, upload bundle (+ image, + DATA if given), configure and start
# the site's endpoint over SSH. DRY_RUN=1 prints what would run. See `crossfl deploy --help`.
SITE ?=
DATA ?=
DEPLOY_FLAGS := $(if $(DATA),--data $(DATA)) $(if $(DRY_RUN),--dry-run)

.PHONY: deploy deploy-status deploy-logs deploy-stop doctor

deploy: setup
	@test -n "$(SITE)" || { echo "usage: make deploy SITE=<name> [DATA=path] [DRY_RUN=1]" >&2; exit 2; }
	$(CROSSFL) deploy $(SITE) $(DEPLOY_FLAGS)

deploy-status: setup
	$(CROSSFL) status $(SITE)

deploy-logs: setup
	@test -n "$(SITE)" || { echo "usage: make deploy-logs SITE=<name>" >&2; exit 2; }
	$(CROSSFL) logs $(SITE)

deploy-stop: setup
	@test -n "$(SITE)" || { echo "usage: make deploy-stop SITE=<name>" >&2; exit 2; }
	$(CROSSFL) stop $(SITE)

## make doctor SITE=frontier [SMOKE=1]: check the site's login node and scheduler over SSH
doctor: setup
	@test -n "$(SITE)" || { echo "usage: make doctor SITE=<name> [SMOKE=1]" >&2; exit 2; }
	$(CROSSFL) doctor $(SITE) $(if $(SMOKE),--smoke)
