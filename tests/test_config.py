from pathlib import Path

import pytest

from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import ConfigError, read_config

VALID = """
models:
  local: {model: hosted_vllm/qwen, api_base: "http://127.0.0.1:9/v1", temperature: 0.5, max_tokens: 300}
  api: {model: openai/gpt-4o-mini, api_key_env: FUSION_TEST_KEY}
roles:
  generators: [{model: local, count: 2}, api]
  fusor: api
fusion: {n: 6, method: fuse, fallback: select}
"""


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_and_toml_give_the_same_config(tmp_path):
    from_yaml = read_config(write(tmp_path, VALID))
    from_toml = read_config(write(tmp_path, """
[models.local]
model = "hosted_vllm/qwen"
api_base = "http://127.0.0.1:9/v1"
temperature = 0.5
max_tokens = 300
[models.api]
model = "openai/gpt-4o-mini"
api_key_env = "FUSION_TEST_KEY"
[roles]
generators = [{model = "local", count = 2}, "api"]
fusor = "api"
[fusion]
n = 6
method = "fuse"
fallback = "select"
""", "config.toml"))
    assert from_yaml.model_dump() == from_toml.model_dump()
    assert [t.model for t in from_yaml.roles.teachers()] == ["local", "api"]
    assert from_yaml.fusor == "api" and from_yaml.judge == "local"


def test_no_config_means_embedded_everywhere():
    config = read_config(None)
    assert config.roles.teachers()[0].model == "embedded" and config.fusor == "embedded"


def test_missing_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file.*without --config"):
        read_config(tmp_path / "nope.yaml")


def test_bad_fields_are_all_named_with_their_path(tmp_path):
    path = write(tmp_path, """
models:
  local: {model: hosted_vllm/qwen, temprature: 0.5}
roles: {generators: local, fusr: local}
fusion: {n: 0, method: blend}
""")
    with pytest.raises(ConfigError) as raised:
        read_config(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: invalid config")
    for where in ("models.local.temprature: unknown field", "roles.fusr: unknown field", "fusion.n:",
                  "fusion.method:"):
        assert where in message


def test_unknown_model_in_a_role(tmp_path):
    with pytest.raises(ConfigError, match=r"roles.fusor names the model 'gpt'.*define it under models"):
        read_config(write(tmp_path, "roles: {fusor: gpt}"))


def test_keys_are_refused_in_the_file(tmp_path):
    with pytest.raises(ConfigError, match="api_key_env"):
        read_config(write(tmp_path, "models: {api: {model: openai/x, extra: {api_key: sk-123}}}"))


def test_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_config(write(tmp_path, "models: [unclosed"))


def test_missing_key_variable_fails_before_sampling(tmp_path, monkeypatch):
    monkeypatch.delenv("FUSION_TEST_KEY", raising=False)
    backends = Backends(read_config(write(tmp_path, VALID)))
    with pytest.raises(ConfigError, match=r"config.yaml: models.api.api_key_env: .*FUSION_TEST_KEY is not set"):
        backends.fusor  # noqa: B018


def test_unreachable_server_fails_the_check(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSION_TEST_KEY", "k")
    backends = Backends(read_config(write(tmp_path, VALID)))
    with pytest.raises(ConfigError, match=r"models.local.api_base: cannot reach http://127.0.0.1:9/v1.*Start"):
        backends.check(timeout=2)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").iterdir()), ids=lambda p: p.name)
def test_shipped_example_configs_are_valid(path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    config = read_config(path)
    backends = Backends(config)
    assert backends.used_models()
    assert all(backends.lm(name) is not None for name in backends.used_models() if name != "embedded")


def test_a_model_of_the_embedded_kind_keeps_the_measured_defaults(tmp_path):
    config = read_config(write(tmp_path, "models: {warm: {model: embedded, temperature: 1.0}}\n"
                                         "roles: {generators: warm}"))
    warm = config.model("warm")
    assert (warm.temperature, warm.adapter, warm.max_tokens, warm.context_window) == (1.0, "plain", 200, 8192)
