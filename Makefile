# make app: install into .venv and start the app. make test: install and run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install app test

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

app: install
	$(BIN)/streamlit run app.py

test: install
	STDIFF_OFFLINE=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -rs
