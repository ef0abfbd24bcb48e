"""The admin's own cloud-init user-data and vendor-data (`ctctl create --type vm --user-data FILE
--vendor-data FILE`), on the VM's NoCloud seed beside ctd's own settings.

Precedence (cloud-init merges, ctd parses none of it): the seed's user-data is a MIME multipart
of ctd's cloud-config first, then the admin's part with the merge type
`dict(no_replace,recurse_list)+list(append)+str()`. So a key ctd sets (hostname, fqdn, the
root user and its keys, the password, ssh_pwauth, timezone, disable_root) keeps ctd's value;
a list the admin also gives (users, runcmd, write_files …) is appended to ctd's; every key
ctd does not set is the admin's. The network is not in user-data at all (network-config, ctd's
only). vendor-data goes to the seed as it is; cloud-init gives user-data precedence over it.

Hostile input: the text is the API caller's. It is never parsed on the host: it is checked to
be UTF-8 text of at most MAX_BYTES without NUL bytes, starting with a format cloud-init knows
(the first line names it), and written as one file into the ISO. Inside the guest it runs as
root, which the VM's owner is anyway. It cannot replace ctd's settings, only add to them: it can
add users and keys (documented in docs/vms.md). The files live in the VM's directory
(user-data, vendor-data; a clone copies them) and are read back at each seed build.
"""

from __future__ import annotations

import hashlib
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

from ctd.errors import InvalidRequest

MAX_BYTES = 64 * 1024   # EC2 allows 16 KiB; generous, and a seed ISO stays small
ADMIN_MERGE = "dict(no_replace,recurse_list)+list(append)+str()"
KINDS = ("user_data", "vendor_data")
FILES = {"user_data": "user-data", "vendor_data": "vendor-data"}
# first line -> MIME type of the part (cloud-init's user-data formats)
_FORMATS = (("#cloud-config", "text/cloud-config"), ("#!", "text/x-shellscript"),
            ("#cloud-boothook", "text/cloud-boothook"), ("#include", "text/x-include-url"),
            ("## template: jinja", "text/jinja2"))


def content_type(text: str) -> str | None:
    first = text.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")
    return next((mime for prefix, mime in _FORMATS if first.startswith(prefix)), None)


def check(value: object, what: str) -> str:
    """The text of a user-data/vendor-data field, or a 400 naming what is wrong."""
    label = what.replace("_", "-")
    if not isinstance(value, str):
        raise InvalidRequest(f"{label} must be the file's text (a string)")
    size = len(value.encode())
    if size > MAX_BYTES:
        raise InvalidRequest(f"{label} is {size} bytes: at most {MAX_BYTES // 1024} KiB")
    if "\0" in value:
        raise InvalidRequest(f"{label} contains a NUL byte: give a text file")
    if content_type(value) is None:
        raise InvalidRequest(f"{label} must start with #cloud-config, #! (a script), #cloud-boothook, "
                             "#include or '## template: jinja'")
    return value


def merged(ctd_config: str, admin: str | None) -> str:
    """The seed's user-data: ctd's cloud-config alone, or ctd's then the admin's as one MIME
    multipart (deterministic: the seed's instance-id is a digest of it)."""
    if admin is None:
        return ctd_config
    boundary = "ctd-" + hashlib.sha256((ctd_config + "\0" + admin).encode()).hexdigest()[:32]
    message = MIMEMultipart(boundary=boundary)
    ours = MIMEText(ctd_config, "cloud-config", "utf-8")
    ours.add_header("Content-Disposition", "attachment", filename="ctd.cfg")
    theirs = MIMEText(admin, (content_type(admin) or "text/plain").split("/", 1)[1], "utf-8")
    theirs.add_header("Content-Disposition", "attachment", filename="admin-user-data")
    theirs["Merge-Type"] = ADMIN_MERGE
    message.attach(ours)
    message.attach(theirs)
    return message.as_string()


def save(vm_dir: Path, kind: str, text: str) -> None:
    path = vm_dir / FILES[kind]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)


def load(vm_dir: Path, kind: str) -> str | None:
    path = vm_dir / FILES[kind]
    if not path.is_file() or path.is_symlink():
        return None
    return path.read_text()


def copy(src_dir: Path, dst_dir: Path) -> None:
    """A clone's: the source VM's files, if it has them."""
    for kind in KINDS:
        text = load(src_dir, kind)
        if text is not None:
            save(dst_dir, kind, text)
