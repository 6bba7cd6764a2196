"""``recovery publish-schemas``: the caller schemas on deployments that ``prefect deploy`` made.

``prefect deploy`` publishes each flow's signature schema (types, lengths, patterns, help text,
the choices of ``type``) and nothing else: it rebuilds ``parameter_openapi_schema`` from the
flow on every deploy, and prefect.yaml has no field or post-deploy step that could add to it.
The rest of ``deployments.schemas.caller_schema`` (configured targets and workflows as choices,
per kind for operations; an emergency needs a reason; unknown parameters rejected) depends on
the worker's config, so it is published after the deploy, from that config, by a
``PATCH /deployments/{id}`` of the schema alone. Run it after every ``prefect deploy`` and after
every change of the config's targets (``recovery serve`` does the same when it starts).
"""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.exceptions import ObjectNotFound

from deployments.serve import DEPLOYMENTS, deployment_schema, load_flow
from recovery.config.loader import RecoveryConfig


async def publish_schemas(config: RecoveryConfig) -> tuple[list[str], list[str]]:
    """(updated, missing): the deployments of the table whose schema was replaced, and those
    the server does not have (not deployed)."""
    updated: list[str] = []
    missing: list[str] = []
    async with get_client() as client:  # its requests are bounded (PREFECT_API_REQUEST_TIMEOUT)
        for spec in DEPLOYMENTS:
            name = f"{load_flow(spec.entrypoint).name}/{spec.name}"
            try:
                deployment = await client.read_deployment_by_name(name)
            except ObjectNotFound:
                missing.append(name)
                continue
            schema = deployment_schema(spec, config)
            await client.update_deployment(deployment.id, DeploymentUpdate(parameter_openapi_schema=schema))
            updated.append(name)
    return updated, missing
