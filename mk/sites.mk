# Site catalog: `make render SITE=frontier` renders one site into build/sites/frontier/;
# `make render` renders every site of deploy/sites/.
SITE ?=

.PHONY: render sites

render: setup
	$(CROSSFL) render $(if $(SITE),$(SITE),--all)

sites: setup
	$(CROSSFL) sites
