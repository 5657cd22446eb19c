"""websockify auth plugin: HTTP basic auth, the password read from a file.

--auth-source names the password file (first line); the user name comes from the
HPCDESK_AUTH_USER environment variable. The secret never appears on a command line.
"""
import hmac
import os

from websockify.auth_plugins import BasicHTTPAuth


class FileBasicAuth(BasicHTTPAuth):
    def __init__(self, src=None):
        super().__init__(src)
        self.user = os.environ.get("HPCDESK_AUTH_USER", "")
        with open(src, encoding="utf-8") as fh:
            self.password = fh.readline().rstrip("\r\n")
        if not self.user or not self.password:
            raise ValueError("hpcdesk_wsauth: empty user name or password")

    def validate_creds(self, username, password):
        ok_user = hmac.compare_digest(username.encode(), self.user.encode())
        ok_pass = hmac.compare_digest(password.encode(), self.password.encode())
        return ok_user and ok_pass
