"""A real SMTP server for idplane's email tests, built on aiosmtpd.

Usage: smtp_server.py --record FILE [--tls none|starttls|implicit --cert PEM --key PEM]
                      [--auth USER:PASSWORD] [--fail-first N] [--fail-reply "451 ..."]
                      [--control FILE] [--delay-ms N] [--pipelining]
                      [--idle-timeout SECONDS [--idle-reply "421 ..."]]
                      [--refuse-ehlo N --ehlo-reply "554 ..."]

Prints "READY <port>" once it accepts connections. Every DATA is recorded as
one JSON line in FILE: {"time", "message_id", "from", "to", "reply"}.
The reply to DATA is, in order: the --fail-reply for the first --fail-first
messages; else the first line of the --control file when it holds an SMTP
reply (for example "451 4.3.0 Try again later" or "554 5.7.1 Rejected");
else "250 OK". Runs until killed.

Recipients whose local part starts with "reject" are refused at RCPT with
550, those starting with "later" with 450. With --pipelining the server
announces PIPELINING (aiosmtpd reads commands from a buffered stream, so it
answers pipelined commands in order) and each record says whether the MAIL
command arrived with more commands behind it ("pipelined") and whether the
next message's MAIL arrived behind the content ("chained").

With --idle-timeout the server closes a connection idle that long, as
servers do with pooled connections; with --idle-reply it first sends that
reply, as Postfix sends "421 4.4.2 ... Error: timeout exceeded".

With --refuse-ehlo N the N-th EHLO of a connection (counting the one after
STARTTLS) gets the --ehlo-reply instead of the extensions: a client that
repeats EHLO meets a server that does not take it.
"""

import argparse
import asyncio
import email
import json
import logging
import socket
import ssl
import sys
import threading
import time
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def free_port(host):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Handler:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.seen = 0

    def reply(self):
        with self.lock:
            self.seen += 1
            n = self.seen
        if n <= self.args.fail_first:
            return self.args.fail_reply
        if self.args.control:
            try:
                with open(self.args.control) as f:
                    line = f.readline().strip()
            except OSError:
                line = ""
            if line[:1] in ("4", "5"):
                return line
        return "250 OK"

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # Counted on the connection: STARTTLS starts a new session.
        server.ehlo_count = getattr(server, "ehlo_count", 0) + 1
        if server.ehlo_count == self.args.refuse_ehlo:
            return [self.args.ehlo_reply]
        session.host_name = hostname
        if self.args.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        # Bytes already buffered behind MAIL: the client pipelined.
        envelope.pipelined = bool(getattr(server._reader, "_buffer", b""))
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0].lower()
        if local.startswith("reject"):
            return "550 5.1.1 Recipient rejected"
        if local.startswith("later"):
            return "450 4.2.1 Mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        # The next MAIL already buffered behind the content: chained.
        chained = bytes(getattr(server._reader, "_buffer", b"")).upper().startswith(b"MAIL")
        if self.args.delay_ms:
            await asyncio.sleep(self.args.delay_ms / 1000)
        reply = self.reply()
        parsed = email.message_from_bytes(envelope.content)
        entry = {
            "time": time.time(),
            "message_id": parsed.get("Message-ID", ""),
            "from": parsed.get("From", ""),
            "subject": parsed.get("Subject", ""),
            "mail_from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "reply": reply,
            "pipelined": getattr(envelope, "pipelined", False),
            "chained": chained,
        }
        with self.lock, open(self.args.record, "a") as f:
            f.write(json.dumps(entry) + "\n")
        return reply


class IdleReplySMTP(SMTP):
    """Sends `idle_reply` before closing a connection idle too long."""

    idle_reply = None

    def _timeout_cb(self):
        if self.idle_reply and self.transport is not None:
            self.transport.write((self.idle_reply + "\r\n").encode())
        super()._timeout_cb()


class IdleReplyController(Controller):
    def factory(self):
        return IdleReplySMTP(self.handler, **self.SMTP_kwargs)


class Authenticator:
    def __init__(self, user, password):
        self.user = user.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        if (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.user
            and auth_data.password == self.password
        ):
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


def main():
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls", choices=["none", "starttls", "implicit"], default="none")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--auth")
    p.add_argument("--record", required=True)
    p.add_argument("--control")
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--fail-reply", default="451 4.3.0 Try again later")
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--pipelining", action="store_true")
    p.add_argument("--idle-timeout", type=float)
    p.add_argument("--idle-reply")
    p.add_argument("--refuse-ehlo", type=int, default=0)
    p.add_argument("--ehlo-reply", default="554 5.7.0 EHLO not accepted here")
    args = p.parse_args()

    port = args.port or free_port(args.host)
    kwargs = {}
    context = None
    if args.tls != "none":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    if args.tls == "starttls":
        kwargs["tls_context"] = context
        kwargs["require_starttls"] = True
    if args.auth:
        user, _, password = args.auth.partition(":")
        kwargs["authenticator"] = Authenticator(user, password)
        kwargs["auth_required"] = True
        # aiosmtpd counts only STARTTLS as TLS; implicit TLS is encrypted
        # from the first byte, so AUTH is offered there too.
        kwargs["auth_require_tls"] = args.tls == "starttls"
    if args.idle_timeout:
        kwargs["timeout"] = args.idle_timeout
    IdleReplySMTP.idle_reply = args.idle_reply
    controller = IdleReplyController(
        Handler(args),
        hostname=args.host,
        port=port,
        ssl_context=context if args.tls == "implicit" else None,
        server_hostname=args.host,
        **kwargs,
    )
    controller.start()
    print(f"READY {port}", flush=True)
    try:
        threading.Event().wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    sys.exit(main())
