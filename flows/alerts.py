"""Automations as code: the Prefect automations that tell an ops team what needs a human.

``install`` makes the Prefect server hold exactly these automations (named ``atoma-ops: …``), creating what is
missing and updating what is there, so running it again changes nothing:

- one per event of ``tasks.events.EVENTS`` (a claimable ticket, an attestation request or a closing window, a
  dispute, a refused claim or a short fee treasury, a short balance, intents in doubt);
- one for the runs of the scheduled deployments that end Failed or Crashed, or turn Late.

Each notifies through one notification block: a webhook by default (``--webhook-url``: a Prefect "Custom Webhook"
block posting ``{"subject", "body", "text"}`` JSON, which Slack- and Mattermost-style incoming webhooks accept), or
any notification block the operator already saved (``--block slack-webhook/ops``, ``--block
microsoft-teams-webhook/ops``, ...). The command line is ``atoma-ops prefect automations install``; this module is
loaded only when that command runs, so the rest of the CLI never imports Prefect.
"""

from __future__ import annotations

import asyncio
from typing import Optional
from uuid import UUID

import typer

from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification
from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client

from tasks.events import EVENTS

#: every automation this module owns starts with this (others on the server are left alone)
PREFIX = "atoma-ops: "
#: the deployments of prefect.yaml that run on a schedule: their Failed, Crashed and Late runs are notified
SCHEDULED_DEPLOYMENTS = ("settlement-run", "attestation-watch", "ledger-sync", "balance-watch")
#: where ``--webhook-url`` saves its block
WEBHOOK_BLOCK_NAME = "atoma-ops-alerts"
RUN_STATES = ("Failed", "Crashed", "Late")


class AlertsError(Exception):
    """What ``install`` cannot do, said plainly (no Prefect API, an unknown block, a block that cannot notify)."""


def automations(block_document_id: UUID, deployments: tuple[str, ...] = SCHEDULED_DEPLOYMENTS) -> list[AutomationCore]:
    """The automations, in a stable order, notifying through the block ``block_document_id``."""
    out = []
    for event, what_to_do in EVENTS.items():
        out.append(AutomationCore(
            name=f"{PREFIX}{event}",
            description=what_to_do,
            trigger=EventTrigger(expect={event}, match={"prefect.resource.id": "atoma.*"}, posture=Posture.Reactive,
                                 threshold=1),
            actions=[SendNotification(
                block_document_id=block_document_id,
                subject="atoma-ops: {{ event.event }} ({{ event.resource['prefect.resource.name'] }})",
                body=(
                    "{{ event.event }}: {{ event.resource['prefect.resource.name'] }} on "
                    "{{ event.resource['atoma.network'] }} at {{ event.occurred }}\n"
                    "{{ event.payload.what_to_do }}\n"
                    "Details: {{ event.payload | tojson }}"
                ),
            )],
        ))
    out.append(AutomationCore(
        name=f"{PREFIX}scheduled runs failed, crashed or late",
        description=f"A run of {', '.join(deployments)} ended Failed or Crashed, or is Late (no worker took it).",
        trigger=EventTrigger(
            expect={f"prefect.flow-run.{s}" for s in RUN_STATES},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "deployment", "prefect.resource.name": list(deployments)},
            posture=Posture.Reactive, threshold=1,
        ),
        actions=[SendNotification(
            block_document_id=block_document_id,
            subject="atoma-ops: run {{ event.resource['prefect.resource.name'] }} is "
                    "{{ event.event.split('.')[-1] }}",
            body=(
                "Flow run {{ event.resource['prefect.resource.name'] }} ({{ event.event }}) at {{ event.occurred }}.\n"
                "{{ event.payload.validated_state.message if event.payload.validated_state else '' }}"
            ),
        )],
    ))
    return out


async def notification_block(webhook_url: str | None = None, block: str | None = None) -> UUID:
    """The block document the automations notify through: ``block`` (``<type slug>/<name>``, saved before), or a
    Custom Webhook block posting to ``webhook_url``, saved (or replaced) as ``custom-webhook/atoma-ops-alerts``."""
    if (webhook_url is None) == (block is None):
        raise AlertsError("give exactly one of --webhook-url URL or --block TYPE/NAME (e.g. slack-webhook/ops)")
    if block is not None:
        if "/" not in block:
            raise AlertsError(f"--block {block!r}: expected TYPE/NAME, e.g. slack-webhook/ops")
        try:
            loaded = await Block.aload(block)
        except (ValueError, KeyError) as exc:
            raise AlertsError(f"no notification block {block!r} on the Prefect server ({exc})") from None
        if "notify" not in loaded.get_block_capabilities():
            raise AlertsError(f"block {block!r} cannot send notifications")
        return loaded._block_document_id  # type: ignore[return-value]
    if not webhook_url.startswith(("http://", "https://")):
        raise AlertsError(f"--webhook-url {webhook_url!r}: an http:// or https:// URL is needed")
    hook = CustomWebhookNotificationBlock(
        name="atoma-ops",
        url=webhook_url,
        json_data={"subject": "{{subject}}", "body": "{{body}}", "text": "{{subject}}\n{{body}}"},
    )
    return await hook.asave(WEBHOOK_BLOCK_NAME, overwrite=True)


async def install(
    webhook_url: str | None = None, block: str | None = None, deployments: tuple[str, ...] = SCHEDULED_DEPLOYMENTS
) -> dict[str, list[str]]:
    """Make the server's ``atoma-ops: …`` automations exactly :func:`automations` (idempotent). Returns the names
    ``created``, ``updated`` and ``removed`` (automations of ours no longer wanted)."""
    block_id = await notification_block(webhook_url, block)
    wanted = automations(block_id, deployments)
    report: dict[str, list[str]] = {"created": [], "updated": [], "removed": []}
    async with get_client() as client:
        existing: dict[str, list] = {}
        for a in await client.read_automations():
            if a.name.startswith(PREFIX):
                existing.setdefault(a.name, []).append(a)
        for automation in wanted:
            found = existing.pop(automation.name, [])
            if found:
                await client.update_automation(found[0].id, automation)
                report["updated"].append(automation.name)
                for duplicate in found[1:]:
                    await client.delete_automation(duplicate.id)
            else:
                await client.create_automation(automation)
                report["created"].append(automation.name)
        for name, stale in existing.items():
            for a in stale:
                await client.delete_automation(a.id)
            report["removed"].append(name)
    return report


# ------------------------------------------------------------------------------------------------ command line
app = typer.Typer(help="Prefect side of atoma-ops: automations that notify the team.", no_args_is_help=True,
                  add_completion=False)
automations_app = typer.Typer(help="The automations that route atoma-ops events and failed runs.", no_args_is_help=True)
app.add_typer(automations_app, name="automations")


@automations_app.command("install")
def install_command(
    webhook_url: Optional[str] = typer.Option(None, "--webhook-url", help="POST each notification here (JSON)."),
    block: Optional[str] = typer.Option(None, "--block", help="An existing notification block, TYPE/NAME."),
    deployment: Optional[list[str]] = typer.Option(
        None, "--deployment", help="Deployments whose Failed/Crashed/Late runs notify (default: the scheduled ones)."
    ),
) -> None:
    """Create or update the automations on the Prefect server of PREFECT_API_URL (running it again changes
    nothing)."""
    deployments = tuple(deployment) if deployment else SCHEDULED_DEPLOYMENTS
    try:
        report = asyncio.run(install(webhook_url, block, deployments))
    except AlertsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - the Prefect API unreachable or refusing: one line, no traceback
        typer.echo(f"error: the Prefect API refused or could not be reached: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    for what in ("created", "updated", "removed"):
        for name in report[what]:
            typer.echo(f"{what:8} {name}")
    typer.echo(f"{len(report['created']) + len(report['updated'])} automation(s) in place")


def main(argv: list[str] | None = None) -> None:
    """``atoma-ops prefect …`` forwards here."""
    app(args=argv, prog_name="atoma-ops prefect")


if __name__ == "__main__":
    main()
