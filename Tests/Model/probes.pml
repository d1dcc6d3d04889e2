/*
 * Fusebox's half-open permits across a fleet, checked exhaustively by SPIN (`make model`).
 *
 * What is modelled (Docs/architecture.md, "Half-open across the fleet"):
 * - Redis hands out at most P probe permits per half-open period (its version); every instance asks it.
 * - A permit's holder ends its probe with an outcome that gives the permit back (an ignored probe here, the case
 *   that frees a permit), written like every outcome: a batch with the sender's sequence number, one write
 *   outstanding at a time, written again after a failed write. The script applies it once (the sender's
 *   high-water mark) and only to the half-open period that granted the permit (the version).
 * - The connection may fail a request that the server ran, did not run, or runs later; a grant whose reply is
 *   lost leaves a permit nobody holds (freed when the half-open period ends).
 * - The half-open period may end without closing (maxHalfOpenDuration) and a new one begin: its permits are new.
 *
 * Invariant: the probes running at once with permits of the current half-open period never exceed P.
 * Built with -DNO_DEDUPE (a batch applied again when written again) or -DNO_VERSION_CHECK (a permit given back to
 * a later half-open period), SPIN finds a run with P + 1.
 */

#ifndef SENDERS
#define SENDERS 2
#endif
#ifndef P
#define P 1
#endif

byte version = 1;            /* the half-open period */
byte probes = 0;             /* permits out, as Redis counts them */
byte high[SENDERS];          /* each sender's high-water mark */
bit reopened = 0;

/* Probes running with a permit of each half-open period (index: version). */
byte running[3];

chan ghosts = [2] of { byte, byte, byte };  /* sender, seq, version */

inline giveBack(sender, seq, v) {
  atomic {
    if
#ifndef NO_DEDUPE
    :: seq <= high[sender] -> skip
#endif
    :: else ->
       if :: seq > high[sender] -> high[sender] = seq :: else -> skip fi;
       if
#ifndef NO_VERSION_CHECK
       :: v == version && probes > 0 -> probes--
#else
       :: probes > 0 -> probes--
#endif
       :: else -> skip
       fi
    fi
  }
}

proctype instance(byte me) {
  byte seq = 0;
  byte held = 0;         /* the version of the permit held, 0: none */
  byte writing = 0;      /* the version of the give-back being written, 0: none */
  byte rounds = 0;
  do
  /* Ask for a permit. The script grants one while fewer than P are out. */
  :: held == 0 && writing == 0 && rounds < 2 ->
     rounds++;
     if
     :: atomic { probes < P -> probes++; held = version; running[held]++ }
     :: atomic { probes < P -> probes++ }   /* granted, but the reply was lost: nobody holds it */
     :: true -> skip                        /* denied, or the request failed */
     fi
  /* The probe ends; its outcome gives the permit back. */
  :: held != 0 ->
     atomic { running[held]--; writing = held; held = 0; seq++ }
  /* The write of that outcome, until a reply says it was written. */
  :: writing != 0 ->
     if
     :: true -> giveBack(me, seq, writing); writing = 0
     :: true -> giveBack(me, seq, writing)                 /* ran, the reply was lost: written again */
     :: true -> skip                                       /* did not run: written again */
     :: nfull(ghosts) -> ghosts!me, seq, writing          /* runs later; written again meanwhile */
     fi
  :: held == 0 && writing == 0 && rounds == 2 -> break
  od
}

/* Time alone: the half-open period ends without closing and the next one begins with every permit free. */
active proctype clock() {
  atomic { !reopened -> reopened = 1; version = 2; probes = 0 }
}

active proctype resumed() {
  byte who; byte seq; byte v;
end:
  do
  :: ghosts?who, seq, v -> giveBack(who, seq, v); atomic { who = 0; seq = 0; v = 0 }
  od
}

active proctype monitor() {
  assert(running[version] <= P)
}

init {
  byte i = 0;
  atomic {
    do
    :: i < SENDERS -> run instance(i); i++
    :: else -> break
    od
  }
}
