"""The gateway as ``tcms serve gateway`` runs it: its SMTP, IMAP and intake listeners and
its protocol worker, all over one context (store, upstream, keys)."""

from __future__ import annotations

import logging
from typing import Any

import click

from gateway import context, imapproxy, intake, memory, submission, workers
from gateway.worker import Worker, answer
from tcms import config as config_mod

log = logging.getLogger("tcms")


async def run(settings: config_mod.Settings) -> None:
    """The gateway: its SMTP, IMAP and intake listeners and its protocol worker."""
    g = settings.gateway
    if not (g.tls_cert and g.tls_key):
        raise click.ClickException("the gateway needs [gateway] tls_cert and tls_key: "
                                   "every listener speaks TLS")
    try:
        ctx = context.create(settings)
        clients = intake.networks(g.intake_clients)
    except (config_mod.ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    await ctx.store.upgrade()
    memory.give_back_large_buffers()
    worker = Worker(ctx)

    async def answer_by_mail(user: str, tx: str, event: Any) -> str:
        return await answer(ctx, user, tx, event, worker.clock())

    handler = submission.SubmissionHandler(
        ctx.store, ctx.upstream, g.tag, on_login=ctx.enroll, on_submit=worker.kick_submissions,
        answer=answer_by_mail, domains=tuple(g.domains), max_recipients=g.max_recipients)
    tls = submission.tls_context(str(g.tls_cert), str(g.tls_key))
    await submission.start(handler, tls=tls, submission=g.split(g.submission),
                           smtps=g.split(g.smtps), max_size=g.max_message_size)
    await workers.start(settings, worker.kick_submissions)  # [gateway] workers > 1
    log.info("gateway SMTP listening: submission %s (STARTTLS), smtps %s (TLS)",
             g.submission, g.smtps)
    addresses = list(g.protocol_addresses().values())
    await intake.start(intake.IntakeHandler(ctx.queues, addresses, [str(c) for c in clients],
                                            on_stored=worker.kick_inbound),
                       listen=g.split(g.intake), tls=tls,
                       max_size=intake.max_size(g.max_message_size))
    log.info("gateway intake listening: %s (LMTP) for %s, from %s", g.intake,
             ", ".join(addresses), ", ".join(g.intake_clients))
    up = ctx.upstream
    # a notice filed into Certified.Accept/Refuse through the proxy is acted on at once
    await imapproxy.start(imapproxy.ProxyConfig(up.imap_host, up.imap_port, g.protocol_folder,
                                                tls, up.imap_tls,
                                                on_filed=worker.answers_filed),
                          starttls=g.split(g.imap_proxy), implicit=g.split(g.imaps_proxy))
    log.info("gateway IMAP listening: %s (STARTTLS), %s (TLS); folder %s hidden",
             g.imap_proxy, g.imaps_proxy, g.protocol_folder)
    try:
        await worker.run()
    finally:
        await ctx.aclose()
