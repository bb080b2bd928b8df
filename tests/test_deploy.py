"""The scheduled-build declarations that need no server: prefect.yaml's deployment and the serve
helper's parameters (the served deployment itself is checked through the API in test_flows.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import REPO


def test_prefect_yaml_deploys_the_build_corpus_flow_on_a_valid_cron():
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    from pipeline.spec import load_spec

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (deployment,) = config["deployments"]
    flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
    assert flow.name == "build-corpus"
    assert set(deployment["parameters"]) <= set(flow.parameters.properties)
    load_spec(REPO / deployment["parameters"]["spec_path"])  # the spec it names exists and validates
    for schedule in deployment["schedules"]:
        assert CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"]).cron == "0 3 * * 0"
    assert deployment["work_pool"]["name"] == "llama-recipe"


def test_serve_names_the_deployment_after_the_spec():
    from flows.deploy import deployment_name

    assert deployment_name("data_specs/llama1.yaml") == "scheduled-llama1"
    assert deployment_name(str(Path("demo"))) == "scheduled-demo"
