/**
 * How long open streams may finish after GOAWAY before `stop()` closes them (issue 3's default):
 * long enough for a typical HTTP response or a short download to complete, short enough that a
 * service manager's stop timeout (systemd's default is 90 s) is never reached.
 */
export const DEFAULT_GRACE_MS = 10_000;
