// The lease guard's program (bash, builtins only: no fork per tick, no external command). Kept as a string so the
// compiled package needs no extra file; src/process/lease-guard.ts starts it and speaks its protocol.
//
// stdin, one line each:  watch PGID PROC_START DEADLINE | renew PGID DEADLINE | forget PGID
// DEADLINE is absolute, in milliseconds since boot (/proc/uptime): a request delayed on its way (the daemon
// frozen between deciding and writing it) cannot move a deadline later than the lease write it stands for.
// stdout:                ready | expired PGID | error TEXT
// A watched group whose deadline (its own monotonic clock, /proc/uptime) passes is SIGTERMed, and SIGKILLed
// ESCALATE_MS later. At EOF on stdin (the daemon is gone, whatever killed it) every watched group gets the same
// at once, and the guard exits. A group whose leader pid now belongs to another process (start time differs) is
// never signalled: Linux does not reuse a pid while it still names a process group.
export const LEASE_GUARD_SCRIPT = `
set -u
# Only SIGKILL or the end of its stdin ends the guard: a terminal's ^C, an ssh hangup or a service manager's
# SIGTERM to every process must not take the guard down before the daemon it watches.
trap '' TERM INT HUP QUIT PIPE TSTP TTIN TTOU USR1 USR2
if (( BASH_VERSINFO[0] < 4 )); then echo "error bash $BASH_VERSION is too old (4 or newer needed)"; exit 3; fi
escalate=$1
declare -A start=() deadline=() killat=() mdeadline=()
now=0
clock() { local up rest; read -r up rest < /proc/uptime; up=\${up/./}; now=$(( 10#$up * 10 )); }
# True while PGID may still be the group we were told about: its leader is the process that started at
# start[PGID], or the leader is gone (then the number still names our group, or no group at all).
ours() {
  local line rest
  local -a f
  if read -r line 2>/dev/null < "/proc/$1/stat"; then
    rest=\${line##*) }
    read -r -a f <<< "$rest"
    [[ \${f[19]-} == "\${start[$1]}" ]]
  else
    return 0
  fi
}
drop() { unset "start[$1]" "deadline[$1]" "killat[$1]"; }
signal() { ours "$1" && kill "-$2" -- "-$1" 2>/dev/null; }
tick() {
  local g m
  clock
  for m in "\${!mdeadline[@]}"; do
    if (( now >= mdeadline[$m] )); then unset "mdeadline[$m]"; sweep_env "RUNWARDEN_ATTEMPT_ID=$m"; fi
  done
  for g in "\${!deadline[@]}"; do
    if [[ -n \${killat[$g]-} ]]; then
      if (( now >= killat[$g] )); then signal "$g" KILL; drop "$g"; fi
    elif (( now >= deadline[$g] )); then
      if signal "$g" TERM; then killat[$g]=$(( now + escalate )); echo "expired $g"; else drop "$g"; fi
    fi
  done
}
# Seconds (with ms) until the nearest deadline, or empty when nothing is watched.
wait_time() {
  local g next=-1 t
  for g in "\${!deadline[@]}"; do
    t=\${killat[$g]:-\${deadline[$g]}}
    if (( next < 0 || t < next )); then next=$t; fi
  done
  for g in "\${!mdeadline[@]}"; do
    t=\${mdeadline[$g]}
    if (( next < 0 || t < next )); then next=$t; fi
  done
  (( next < 0 )) && { timeout=; return; }
  t=$(( next - now )); (( t < 1 )) && t=1
  printf -v timeout '%d.%03d' $(( t / 1000 )) $(( t % 1000 ))
}
valid() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
# Adds to the watched groups, deadline passed, the group of every process whose environment holds entry $1, so
# the next tick (or the end) signals them. RUNWARDEN_ATTEMPT_ID=M: a command frozen between its spawn and its watch
# line; RUNWARDEN_DAEMON=TAG (at EOF only): a command whose daemon died before its watch line went out.
sweep_env() {
  local p kv line rest pg
  local -a f
  set +f
  for p in /proc/[0-9]*; do
    p=\${p#/proc/}
    while IFS= read -r -d '' kv; do
      [[ $kv == "$1" ]] || continue
      if read -r line 2>/dev/null < "/proc/$p/stat"; then
        rest=\${line##*) }
        read -r -a f <<< "$rest"
        pg=\${f[2]-}
        if valid "$pg" && [[ -z \${start[$pg]-} ]]; then
          if read -r line 2>/dev/null < "/proc/$pg/stat"; then
            rest=\${line##*) }; read -r -a f <<< "$rest"; start[$pg]=\${f[19]-}
          else
            start[$pg]=gone
          fi
          deadline[$pg]=0
        elif valid "$pg" && [[ -z \${killat[$pg]-} ]]; then
          deadline[$pg]=0
        fi
      fi
      break
    done 2>/dev/null < "/proc/$p/environ"
  done
  set -f
}
end_all() {
  local g left until
  [[ -n \${GUARD_TAG-} ]] && sweep_env "RUNWARDEN_DAEMON=$GUARD_TAG"
  clock
  for g in "\${!start[@]}"; do signal "$g" TERM || drop "$g"; done
  until=$(( now + escalate ))
  (( nap )) || until=0
  while :; do
    left=0
    for g in "\${!start[@]}"; do
      if ours "$g" && kill -0 -- "-$g" 2>/dev/null; then left=1; else drop "$g"; fi
    done
    clock
    (( left == 0 || now >= until )) && break
    read -r -t 0.05 -u 3 _ || :
  done
  for g in "\${!start[@]}"; do signal "$g" KILL; done
  exit 0
}
# A pipe nobody writes to, opened read-write so it never reaches EOF: read -t on it is a sleep without a fork
# (stdin cannot serve once it is at EOF). One fork, now; without it the end skips the grace before SIGKILL.
nap=0
exec 3<> <(:) && nap=1
echo ready
clock
timeout=
# A read that times out in the middle of a line keeps what it read (bash puts it in the variable): that part waits
# in 'partial' for the rest, or a watch line cut in two would be lost and its group never guarded.
partial=
set -f
while :; do
  if [[ -n $timeout ]]; then read -r -t "$timeout" line; status=$?; else read -r line; status=$?; fi
  if (( status > 128 )); then partial+=$line; line=; fi
  if (( status == 0 )); then
    line=$partial$line; partial=
    words=($line)
    cmd=\${words[0]-} a=\${words[1]-} b=\${words[2]-} c=\${words[3]-}
    clock
    case "$cmd" in
      watch)
        if valid "$a" && valid "$b" && [[ $c =~ ^-?[0-9]+$ ]]; then
          start[$a]=$b; deadline[$a]=$c; unset "killat[$a]"
        else echo "error bad watch line: $a $b $c"; fi ;;
      renew)
        if valid "$a" && [[ $b =~ ^-?[0-9]+$ ]]; then
          [[ -n \${start[$a]-} && -z \${killat[$a]-} ]] && (( b > deadline[$a] )) && deadline[$a]=$b
        else echo "error bad renew line: $a $b"; fi ;;
      forget) valid "$a" && drop "$a" ;;
      mwatch)
        if [[ $a =~ ^[A-Za-z0-9-]+$ && $b =~ ^-?[0-9]+$ ]]; then mdeadline[$a]=$b
        else echo "error bad mwatch line: $a $b"; fi ;;
      mrenew)
        if [[ $a =~ ^[A-Za-z0-9-]+$ && $b =~ ^-?[0-9]+$ ]]; then
          [[ -n \${mdeadline[$a]-} ]] && (( b > mdeadline[$a] )) && mdeadline[$a]=$b
        else echo "error bad mrenew line: $a $b"; fi ;;
      mforget) unset "mdeadline[$a]" ;;
      *) echo "error unknown command: $cmd" ;;
    esac
  elif (( status <= 128 )); then
    end_all
  fi
  tick
  wait_time
done
`;
