"""A real RTSP camera from a picture or a video file: GStreamer's RTSP server (Debian's
gir1.2-gst-rtsp-server-1.0, python3-gi and gstreamer1.0-plugins-{base,good,ugly}; -bad for
H.265) serving it as H.264 or H.265, behind basic auth when a user is given. For trying a
site config, and for the RTSP tests and measurements.

    /usr/bin/python3 deploy/rtsp_camera.py face.jpg --port 8554 --user viewer   # password: $RTSP_PASSWORD
    /usr/bin/python3 deploy/rtsp_camera.py clip.mp4 --size 1920x1080 --codec h265

A picture is streamed forever at --fps; a video plays once per client, scaled to --size.
Run it with Debian's own Python (PyGObject is not in the project's environment). It prints
"ready" once it listens; SIGTERM or Ctrl-C stops it.
"""

import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ENCODERS = {
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={key} ! rtph264pay name=pay0 pt=96",
    "h265": "x265enc tune=zerolatency speed-preset=ultrafast key-int-max={key} ! rtph265pay name=pay0 pt=96",
}


def launch_line(source: str, size: str, fps: int, codec: str) -> str:
    scale = ""
    if size:
        width, height = size.lower().split("x")
        scale = f"videoscale ! video/x-raw,width={int(width)},height={int(height)} ! "
    if source.lower().endswith((".jpg", ".jpeg")):
        head = f'multifilesrc location="{source}" loop=true caps="image/jpeg,framerate={fps}/1" ! jpegdec'
    else:
        head = f'filesrc location="{source}" ! decodebin'
    return f"( {head} ! videoconvert ! {scale}{ENCODERS[codec].format(key=fps)} )"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a .jpg picture (streamed forever) or a video file")
    parser.add_argument("--port", default="8554")
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--user", default="", help="require basic auth as this user, password from $RTSP_PASSWORD")
    parser.add_argument("--size", default="", metavar="WxH", help="scale to this size")
    parser.add_argument("--fps", type=int, default=15, help="a picture's frame rate (and the key-frame interval)")
    parser.add_argument("--codec", choices=sorted(ENCODERS), default="h264")
    args = parser.parse_args()
    if not os.path.isfile(args.source):
        parser.error(f"{args.source} is not a file")
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_service(args.port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.source, args.size, args.fps, args.codec))
    factory.set_shared(True)
    if args.user:
        password = os.environ.get("RTSP_PASSWORD")
        if not password:
            parser.error("--user needs the password in $RTSP_PASSWORD")
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("viewer", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
        permissions.add_permission_for_role("viewer", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on port {args.port}", file=sys.stderr)
        return 2
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    signal.signal(signal.SIGINT, lambda *_: loop.quit())
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
