#!/usr/bin/env python3
"""A webhook receiver for mplink's link-change events: verifies the Standard Webhooks signature,
refuses stale timestamps, dedupes on webhook-id, and answers 2xx only once the event is handled.

    MPLINK_WEBHOOK_SECRET=whsec_... python3 examples/webhook_receiver.py 8080
"""
import base64, hashlib, hmac, json, os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

KEY = base64.b64decode(os.environ["MPLINK_WEBHOOK_SECRET"].removeprefix("whsec_"))
TOLERANCE_S = 5 * 60
seen_ids = set()  # keep this in your database, with the last "seq" handled per organization


def verified(headers, body: bytes) -> bool:
    msg_id, ts = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > TOLERANCE_S:
        return False
    signed = msg_id.encode() + b"." + ts.encode() + b"." + body
    expected = base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    # Several signatures during a secret rotation: any one may match.
    return any(
        hmac.compare_digest(sig.removeprefix("v1,"), expected)
        for sig in headers.get("webhook-signature", "").split(" ")
        if sig.startswith("v1,")
    )


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if not verified(self.headers, body):
            self.send_response(401)
            self.end_headers()
            return
        event = json.loads(body)
        if self.headers["webhook-id"] not in seen_ids:
            data = event["data"]
            # Act here: show "linked", stop charging the card, send final usage, ...
            print(event["type"], data["org_id"], data["seq"], data["payment_method"], flush=True)
            seen_ids.add(self.headers["webhook-id"])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
