#!/usr/bin/env python3
"""Reference telephony hook service for idplane (and Okta).

Implements Okta's telephony inline hook contract: it accepts
`com.okta.telephony.provider` requests, checks the auth header, delivers the
one-time passcode and answers with a `com.okta.telephony.action` command.

Python 3 standard library only. By default it "delivers" by printing each
OTP to its console; set BRIDGE_PROVIDER=twilio to send real SMS and voice
calls through Twilio (see README.md), or write your own provider class.

Environment:
  BRIDGE_TOKEN        secret expected in the auth header (default dev-token-change-me)
  BRIDGE_AUTH_HEADER  name of that header (default Authorization)
  BRIDGE_HOST         address to bind (default 127.0.0.1)
  BRIDGE_PORT         port (default 8089; 0 picks a free one)
  BRIDGE_PATH         path served (default /telephony)
  BRIDGE_PROVIDER     console (default) or twilio
"""

import base64
import hmac
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 256 * 1024
EVENT_TYPE = "com.okta.telephony.provider"
ACTION = "com.okta.telephony.action"


class DeliveryError(Exception):
    """The provider did not take the message."""


class ConsoleProvider:
    """Prints the message instead of sending it: for development only."""

    name = "console"

    def deliver(self, channel, phone, text, code):
        if channel == "CALL":
            line = f"[voice call] {phone}: your code is {' '.join(code)}"
        else:
            line = f"[sms] {phone}: {text}"
        print(f"OTP {code} -> {line}", flush=True)
        return {"transactionId": str(uuid.uuid4()), "status": "SUCCESSFUL", "metadata": None}


class TwilioProvider:
    """Sends through Twilio's REST API (Messages for SMS, Calls for voice)."""

    name = "twilio"

    def __init__(self):
        try:
            self.sid = os.environ["TWILIO_ACCOUNT_SID"]
            self.token = os.environ["TWILIO_AUTH_TOKEN"]
            self.sender = os.environ["TWILIO_FROM"]
        except KeyError as missing:
            sys.exit(f"BRIDGE_PROVIDER=twilio needs {missing.args[0]}")
        self.base = f"https://api.twilio.com/2010-04-01/Accounts/{self.sid}"

    def _post(self, resource, form):
        data = urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(f"{self.base}/{resource}.json", data=data, method="POST")
        basic = base64.b64encode(f"{self.sid}:{self.token}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
        try:
            with urllib.request.urlopen(request, timeout=8) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            try:
                detail = json.load(e).get("message", "")
            except ValueError:
                detail = ""
            raise DeliveryError(f"Twilio answered {e.code} {detail}".strip()) from e
        except (urllib.error.URLError, TimeoutError) as e:
            raise DeliveryError(f"cannot reach Twilio: {e}") from e

    def deliver(self, channel, phone, text, code):
        if channel == "CALL":
            spoken = ", ".join(code)
            twiml = f"<Response><Say>Your verification code is {spoken}. Again: {spoken}.</Say></Response>"
            answer = self._post("Calls", {"To": phone, "From": self.sender, "Twiml": twiml})
        else:
            answer = self._post("Messages", {"To": phone, "From": self.sender, "Body": text})
        # Twilio queues the message: the delivery report comes later.
        status = "FAILED" if answer.get("status") in ("failed", "undelivered") else "PENDING"
        return {"transactionId": answer.get("sid"), "status": status,
                "metadata": {"twilioStatus": answer.get("status")}}


PROVIDERS = {"console": ConsoleProvider, "twilio": TwilioProvider}


def action(status, provider, transaction_id=None, metadata=None):
    value = {"status": status, "provider": provider, "transactionId": transaction_id}
    if metadata is not None:
        value["transactionMetadata"] = metadata
    return {"commands": [{"type": ACTION, "value": [value]}]}


def error(summary, cause):
    return {"error": {"errorSummary": summary, "errorCauses": [{"errorSummary": cause}]}}


class Handler(BaseHTTPRequestHandler):
    server_version = "telephony-bridge/1"
    protocol_version = "HTTP/1.1"

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        config = self.server.config
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            return self.answer(413, error("Request too large", f"over {MAX_BODY} bytes"))
        raw = self.rfile.read(length)
        if self.path.split("?")[0] != config["path"]:
            return self.answer(404, error("Not found", f"POST {config['path']}"))
        presented = (self.headers.get(config["auth_header"]) or "").encode()
        if not hmac.compare_digest(presented, config["token"]):
            print(f"refused a request without the right {config['auth_header']} header", flush=True)
            return self.answer(401, error("Unauthorized", f"wrong or missing {config['auth_header']} header"))
        try:
            event = json.loads(raw)
            profile = event["data"]["messageProfile"]
            phone = profile["phoneNumber"]
            code = profile["otpCode"]
            channel = profile.get("deliveryChannel", "SMS").upper()
        except (ValueError, KeyError, TypeError) as e:
            return self.answer(400, error("Bad request", f"not a telephony hook request: {e}"))
        if event.get("eventType") != EVENT_TYPE:
            return self.answer(400, error("Bad request", f"eventType must be {EVENT_TYPE}"))
        text = profile.get("msgTemplate") or f"Your verification code is {code}"
        provider = config["provider"]
        try:
            result = provider.deliver(channel, phone, text, code)
        except DeliveryError as e:
            print(f"delivery failed: {e}", flush=True)
            return self.answer(200, action("FAILED", provider.name))
        return self.answer(200, action(result["status"], provider.name,
                                       result["transactionId"], result["metadata"]))

    def log_message(self, fmt, *args):
        # One line per request without the body (it holds the code).
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")


def main():
    provider_name = os.environ.get("BRIDGE_PROVIDER", "console")
    if provider_name not in PROVIDERS:
        sys.exit(f"BRIDGE_PROVIDER must be one of {', '.join(PROVIDERS)}")
    config = {
        "token": os.environ.get("BRIDGE_TOKEN", "dev-token-change-me").encode(),
        "auth_header": os.environ.get("BRIDGE_AUTH_HEADER", "Authorization"),
        "path": os.environ.get("BRIDGE_PATH", "/telephony"),
        "provider": PROVIDERS[provider_name](),
    }
    host = os.environ.get("BRIDGE_HOST", "127.0.0.1")
    port = int(os.environ.get("BRIDGE_PORT", "8089"))
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.config = config
    bound = server.server_address
    print(f"listening on {bound[0]}:{bound[1]}{config['path']} (provider {provider_name})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
