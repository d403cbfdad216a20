"""Keeps `karpenter.sh/do-not-disrupt: "true"` on this pod while ComfyUI has work queued or
running, and removes it when the queue is empty, so Karpenter consolidates an idle GPU node but
never one in the middle of a generation. Runs beside ComfyUI (same image: python3 is there),
with the pod's service-account token mounted only into this container."""

import json
import os
import ssl
import time
import urllib.request

ANNOTATION = "karpenter.sh/do-not-disrupt"
QUEUE = "http://127.0.0.1:{}/queue".format(os.environ.get("COMFYUI_PORT", "8848"))
ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
POD = "https://kubernetes.default.svc/api/v1/namespaces/{}/pods/{}".format(
    os.environ["POD_NAMESPACE"], os.environ["POD_NAME"])
PERIOD = 10


def busy():
    """Whether ComfyUI has a prompt running or pending."""
    with urllib.request.urlopen(QUEUE, timeout=5) as reply:
        queue = json.load(reply)
    return bool(queue.get("queue_running") or queue.get("queue_pending"))


def annotate(value):
    """Sets the annotation to `value`, or removes it when `value` is None (merge patch)."""
    with open(os.path.join(ACCOUNT, "token"), encoding="utf-8") as f:
        token = f.read().strip()
    body = json.dumps({"metadata": {"annotations": {ANNOTATION: value}}}).encode()
    request = urllib.request.Request(POD, data=body, method="PATCH", headers={
        "Authorization": "Bearer " + token,
        "Content-Type": "application/merge-patch+json",
    })
    context = ssl.create_default_context(cafile=os.path.join(ACCOUNT, "ca.crt"))
    urllib.request.urlopen(request, context=context, timeout=10).close()


def main():
    marked = None
    while True:
        try:
            now = busy()
            if now != marked:
                annotate("true" if now else None)
                marked = now
                print("do-not-disrupt", "set: a job runs" if now else "removed: idle", flush=True)
        except Exception as error:  # ComfyUI starting, API server away: try again next period
            print("do-not-disrupt: {}".format(error), flush=True)
        time.sleep(PERIOD)


if __name__ == "__main__":
    main()
