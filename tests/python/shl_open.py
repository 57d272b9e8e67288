"""Opens a SMART Health Link as a viewer would, with jwcrypto (an independent JOSE library).

Usage: shl_open.py SHLINK RECIPIENT [PASSCODE] [--wrong WRONG_PASSCODE] [--embedded]

Decodes the `shlink:/` payload, checks its fields (HL7 SMART Health Cards and Links IG, STU1),
posts the manifest request (first with WRONG_PASSCODE, expecting 401 and remainingAttempts),
fetches the file (embedded, or from its location), decrypts the compact JWE with the link's
key and prints one JSON report: the payload's fields, the refusal, and the decrypted bundle's
resource types and ids.
"""

import base64
import json
import sys
import urllib.error
import urllib.request

from jwcrypto import jwe, jwk


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def post(url: str, body: dict):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def main() -> None:
    args = sys.argv[1:]
    embedded = "--embedded" in args
    args = [a for a in args if a != "--embedded"]
    wrong = None
    if "--wrong" in args:
        i = args.index("--wrong")
        wrong = args[i + 1]
        del args[i : i + 2]
    link, recipient = args[0], args[1]
    passcode = args[2] if len(args) > 2 else None
    assert link.startswith("shlink:/"), link
    payload = json.loads(b64url_decode(link[len("shlink:/") :]))
    report = {"payload": {k: v for k, v in payload.items() if k != "key"}}
    key_bytes = b64url_decode(payload["key"])
    report["key_bytes"] = len(key_bytes)
    request = {"recipient": recipient}
    if embedded:
        request["embeddedLengthMax"] = 10_000_000
    if wrong is not None:
        status, body = post(payload["url"], {**request, "passcode": wrong})
        report["wrong"] = {"status": status, "body": body}
    if passcode is not None:
        request["passcode"] = passcode
    status, manifest = post(payload["url"], request)
    report["status"] = status
    if status != 200:
        report["body"] = manifest
        print(json.dumps(report))
        return
    f = manifest["files"][0]
    report["contentType"] = f["contentType"]
    if "embedded" in f:
        token, report["via"] = f["embedded"], "embedded"
    else:
        with urllib.request.urlopen(f["location"]) as r:
            report["fileContentType"] = r.headers.get("content-type")
            token, report["via"] = r.read().decode(), "location"
    key = jwk.JWK(kty="oct", k=payload["key"])
    obj = jwe.JWE()
    obj.deserialize(token, key=key)
    report["header"] = json.loads(obj.objects["protected"])
    bundle = json.loads(obj.payload)
    report["bundle"] = {
        "resourceType": bundle["resourceType"],
        "resources": sorted(
            [e["resource"]["resourceType"], e["resource"].get("id", "")] for e in bundle["entry"]
        ),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
