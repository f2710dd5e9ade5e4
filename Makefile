# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo lock clean-venv wheelhouse

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml scripts/setup_env.sh
	PYTHON=$(PYTHON) scripts/setup_env.sh $(VENV)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests --durations=10

demo: $(STAMP)
	$(VENV)/bin/lucie demo

# wheelhouse/ for a GPU node without network (docs/launching.md): NODE_FREEZE=<the node's pip freeze>
# leaves out what it has; MAX_MIB raises the 60 MiB cap (a node with only a torch needs about 185 MiB).
wheelhouse: $(STAMP)
	$(PY) scripts/wheelhouse.py $(if $(NODE_FREEZE),--node-freeze $(NODE_FREEZE)) $(if $(MAX_MIB),--max-mib $(MAX_MIB))

# Re-freeze requirements.txt from the current venv (after changing a top-level pin).
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v '^nvidia-resiliency-ext==' > requirements.lock.tmp
	sed -n '/^#/p' requirements.txt > requirements.txt.new
	cat requirements.lock.tmp >> requirements.txt.new
	mv requirements.txt.new requirements.txt && rm requirements.lock.tmp

clean-venv:
	rm -rf $(VENV)
