/*
 * Fusebox's probe leases, checked exhaustively by SPIN (`make model`): what happens to a half-open permit when its
 * holder dies. Tests/Model/probes.pml checks the rest of the permit protocol (retransmission, versions).
 *
 * What is modelled (Docs/architecture.md, "Probe leases"; lua/breaker.lua, field `leases`):
 * - Redis hands out at most P probe permits at a time; each is a lease held by its sender until a time. A lease
 *   that is over no longer counts, so its permit is free again.
 * - A holder gives its own permit back with the probe's outcome; that write may reach Redis at once or later (a
 *   delayed write on a connection that broke), even after its sender died.
 * - While its probe runs, a live holder renews its lease before it ends; time only moves on as far as that allows,
 *   which is the assumption a lease rests on: a holder that reaches Redis keeps its permit.
 * - An instance may die at any moment (SIGKILL): its probe stops, its lease is neither given back nor renewed.
 *   A grant whose reply is lost leaves a lease nobody holds.
 *
 * Invariants: the probes running at once never exceed P; and a request is denied only while some lease is still
 * running (a dead holder's permit is free once its lease ends: no stall). Built with -DNO_HOLDER_CHECK (an outcome
 * frees any permit, not its sender's), SPIN finds a run with P + 1 probes; with -DNO_EXPIRY (leases never end), a
 * denial while no lease runs.
 */

#define SENDERS 3
#define P 1
#define LEASE 2
#define TMAX 3

byte now = 0;                /* Redis time, in ticks */
byte expiry[SENDERS];        /* each sender's lease: the tick it ends, 0: none */
bit holds[SENDERS];          /* each live instance's probe is running */
byte running = 0;            /* probes running */
bit died = 0;                /* one instance dies in a run */
chan late = [1] of { byte }; /* a give-back that reaches Redis later: its sender */

#ifndef NO_EXPIRY
#define RUNS(j) (expiry[j] > now)
#else
#define RUNS(j) (expiry[j] != 0)
#endif
#define LEASES_RUNNING ((RUNS(0) -> 1 : 0) + (RUNS(1) -> 1 : 0) + (RUNS(2) -> 1 : 0))
/* A live holder's lease outlasts the next tick. */
#define RENEWED(j) (!holds[j] || expiry[j] > now + 1)

inline giveBack(sender) {
  atomic {
#ifndef NO_HOLDER_CHECK
    expiry[sender] = 0
#else
    if
    :: RUNS(0) -> expiry[0] = 0
    :: else -> if :: RUNS(1) -> expiry[1] = 0 :: else -> if :: RUNS(2) -> expiry[2] = 0 :: else -> skip fi fi
    fi
#endif
  }
}

proctype instance(byte me) {
  bit asked = 0;
  do
  /* Ask for a permit: granted while fewer than P leases run. */
  :: !asked && !holds[me] ->
     asked = 1;
     if
     :: atomic { LEASES_RUNNING < P -> expiry[me] = now + LEASE; holds[me] = 1; running++ }
     :: atomic { LEASES_RUNNING < P -> expiry[me] = now + LEASE }      /* granted, the reply was lost */
     :: atomic { LEASES_RUNNING >= P -> assert(expiry[0] > now || expiry[1] > now || expiry[2] > now) }  /* denied */
     fi
  /* While the probe runs, its lease is renewed before it ends. */
  :: atomic { holds[me] && expiry[me] > now && expiry[me] <= now + 1 -> expiry[me] = now + LEASE }
  /* The probe ends; its outcome gives the permit back, now or later. */
  :: holds[me] ->
     atomic { running--; holds[me] = 0 };
     if
     :: giveBack(me)
     :: late!me
     fi
  /* SIGKILL: the probe stops; nothing is given back or renewed again. */
  :: !died -> atomic { died = 1; if :: holds[me] -> running--; holds[me] = 0 :: else -> skip fi }; break
  :: asked && !holds[me] -> break
  od
}

/* Time moves on while no live holder's lease would end (they renew first). */
active proctype clock() {
end:
  do
  :: atomic { now < TMAX + LEASE && RENEWED(0) && RENEWED(1) && RENEWED(2) -> now++ }
  od
}

active proctype delayed() {
  byte who;
end:
  do
  :: late?who -> giveBack(who); who = 0
  od
}

active proctype monitor() {
  assert(running <= P)
}

init {
  atomic { run instance(0); run instance(1); run instance(2) }
}
