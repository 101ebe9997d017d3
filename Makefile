# Set-up and the two entry points of the README: `make run` (main job) and `make test`.
# Set-up is idempotent: Debian packages only when missing, the venv only when pyproject.toml changed.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# chromium: the demo's browser test; ffmpeg: Gradio encodes streamed audio output (the Speak tab) through it
DEB_PACKAGES := espeak-ng flite fluidsynth fluid-soundfont-gm chromium ffmpeg
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed

.PHONY: setup run test clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=""; for pkg in $(DEB_PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

run: $(STAMP)
	$(VENV)/bin/mamba-audio quickstart --out runs/quickstart

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
