#!/bin/sh
# One stage's command in the pipeline end-to-end test. It proves by itself what the test asserts:
# - no two attempts of one task at once: an O_EXCL lock per (stage, run) in the evidence directory names its
#   holder (pid and start time); a lock held by a live process is a violation;
# - no task before its upstream is done: the upstream output's result.txt must exist when the attempt starts
#   (it is written last by the upstream attempt that was then registered done);
# - a journal per task, `start|end ATTEMPT PID CENTISECONDS` on one clock (/proc/uptime), read back by the test.
# argv: STAGE NUMBER OUTPUT ATTEMPT EVIDENCE UPSTREAM_OUTPUT("" for the first stage) EXIT_PLAN
# EXIT_PLAN: "ok", "fail-once" (attempt 1 exits 3) or "no-retry" (exits 42).
stage=$1 number=$2 out=$3 attempt=$4 ev=$5 upstream=$6 plan=$7
journal="$ev/journal/$stage-$number"
lock="$ev/locks/$stage-$number"

read -r stat < /proc/$$/stat
set -- $stat
mystart=${22}
me="$$ $mystart"
now() {
  read -r up _ < /proc/uptime
  echo "${up%.*}${up#*.}"
}
violation() {
  echo "$1" > "$ev/violations/$stage-$number-$attempt-$$"
  exit 97
}
holder_alive() {
  [ -n "$1" ] && [ -n "$2" ] || return 1
  s=
  read -r s 2>/dev/null < "/proc/$1/stat" || return 1
  set -- $2 $s
  [ "$4" != Z ] && [ "$1" = "${23}" ]
}
take_lock() {
  ( set -C; echo "$me" > "$lock" ) 2>/dev/null
}

echo "start $attempt $$ $(now)" >> "$journal"
echo "$$ $mystart" > "$ev/procs/$stage-$number-$attempt-$$"
if ! take_lock; then
  holder=
  read -r holder 2>/dev/null < "$lock"
  if [ -z "$holder" ]; then sleep 0.2; read -r holder 2>/dev/null < "$lock"; fi
  # shellcheck disable=SC2086
  if holder_alive $holder; then violation "$stage $number attempt $attempt ($me) started while ($holder) held the lock"; fi
  rm -f "$lock"
  take_lock || violation "$stage $number attempt $attempt ($me) lost a stale lock to another attempt"
fi
if [ -n "$upstream" ] && [ ! -s "$upstream/result.txt" ]; then
  violation "$stage $number attempt $attempt started before its upstream output $upstream/result.txt existed"
fi

# Some runs work long enough for the daemon's SIGKILL to find them busy.
case $number in *7) sleep 1 ;; *) sleep 0.05 ;; esac

case $plan in
  no-retry) rm -f "$lock"; echo "end $attempt $$ $(now)" >> "$journal"; exit 42 ;;
  fail-once) if [ "$attempt" = 1 ]; then rm -f "$lock"; echo "end $attempt $$ $(now)" >> "$journal"; exit 3; fi ;;
esac
{ [ -n "$upstream" ] && cat "$upstream/result.txt"; echo "$stage $number $attempt"; } > "$out/result.txt"
rm -f "$lock"
echo "end $attempt $$ $(now)" >> "$journal"
exit 0
