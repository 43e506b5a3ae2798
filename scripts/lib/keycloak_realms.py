#!/usr/bin/env python3
"""Deletes the realms whose names start with a prefix on the local stack's
identity provider (scripts/infra.sh: Keycloak on 127.0.0.1:8180, its
bootstrap admin on the loopback), and prints how many.

    keycloak_realms.py delete-prefix fbtest-
"""
import json
import os
import sys
import urllib.parse
import urllib.request

BASE = os.environ.get("FEEDBACK_TEST_KEYCLOAK_URL", "http://127.0.0.1:8180")


def call(method, path, token=None, form=None):
    data = urllib.parse.urlencode(form).encode() if form else None
    request = urllib.request.Request(BASE + path, data=data, method=method)
    if token:
        request.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
        return json.loads(body) if body else None


def main():
    if len(sys.argv) != 3 or sys.argv[1] != "delete-prefix" or not sys.argv[2]:
        sys.exit(__doc__)
    prefix = sys.argv[2]
    token = call("POST", "/realms/master/protocol/openid-connect/token", form={
        "grant_type": "password", "client_id": "admin-cli",
        "username": "admin", "password": "admin"})["access_token"]
    deleted = 0
    for realm in call("GET", "/admin/realms", token):
        name = realm["realm"]
        if name.startswith(prefix):
            call("DELETE", "/admin/realms/" + urllib.parse.quote(name), token)
            deleted += 1
    print(f"{deleted} deleted")


if __name__ == "__main__":
    main()
