/*
 * Fusebox's outcome-write protocol, for one breaker, checked exhaustively by SPIN (`make model`).
 *
 * What is modelled (Docs/architecture.md, "Exactly once"):
 * - Each sender (one adapter object) records outcomes, holds them as counts, and writes them as batches, each with
 *   the sender's next sequence number. A batch whose write failed is kept with its number and written again.
 * - A sender has at most one write of the breaker outstanding (stop-and-wait): the next batch leaves only after
 *   the reply to the last one. Built with -DPIPELINED, it writes whenever it likes: the protocol before the fix.
 * - The connection may answer a write with a failure while the server ran it, did not run it, or runs it later
 *   (a frozen server that resumes and reads what an old socket had sent). Writes queued behind a failed one may
 *   still reach the server on a new connection.
 * - Or with a failure that says the server certainly did not run it (never sent: no connection; refused before
 *   running: OOM, BUSY, …): the sender then gives the batch's number up and joins its outcomes to what it holds,
 *   so that an outage's attempts leave one batch, not one per attempt, but only if no earlier attempt of that
 *   batch may have run. Built with -DMERGE_ANY_FAILURE, it joins after any failure (a batch that may have run
 *   too); with -DFORGET_EARLIER_ATTEMPTS, after a "not run" even when an earlier attempt of the batch may have run
 *   (the first version of this change, which SPIN refused): both count twice.
 * - Redis keeps each sender's high-water mark and applies a batch only if its number is above it; it keeps the
 *   totals and a count window of W calls (successes enter before failures within a batch) and opens the breaker
 *   when the window's failure ratio reaches one half over at least MIN calls. Built with -DADDED_SUMS, the window
 *   adds a batch's calls to its sums (the count-window bug) instead of counting its ring.
 *
 * Invariants:
 * - never counted more than made, and once every sender is done and every write has been run, every outcome
 *   counted exactly once;
 * - a window that crosses the threshold opens the breaker (checked after every batch the server applies).
 */

#if defined(MERGE_ANY_FAILURE) || defined(FORGET_EARLIER_ATTEMPTS)
#define NOT_RUN
#endif
#ifdef NOT_RUN
/* Joining batches is each sender's own affair: one sender, three outcomes, two "not run" failures. */
#define SENDERS 1
#define OUTCOMES 3
#define NOT_RUNS 2
#define MAXSEQ 6
#define KEPT 1
#else
/* Without "not run" failures nothing reads whether a batch was kept: a constant, not a state. */
#define KEPT 0
#define SENDERS 2
#define OUTCOMES 2
#define NOT_RUNS 0
#define MAXSEQ 4
#endif
#define W 2
#define MIN 2

/* Redis: the state the script keeps. */
byte high[SENDERS];
byte counted = 0;
bit opened = 0;
bit ring[W];          /* 1: a failure */
byte filled = 0;
byte next = 0;
byte sumCalls = 0;    /* the window's stored sums */
byte sumFailures = 0;

byte made = 0;        /* outcomes recorded by every sender together */
byte notRun = 0;      /* failures that said "not run" so far (each costs the sender a new number) */
byte finished = 0;

/* Writes that failed at the sender but that the server runs later (a frozen server resuming). */
chan ghosts = [2] of { byte, byte, byte, byte };  /* sender, seq, successes, failures */

inline push(failure) {
  if
  :: filled < W -> filled++
  :: else -> skip
  fi;
  ring[next] = failure;
  next = (next + 1) % W
}

/* One script call: applies a record batch at most once. */
inline apply(sender, seq, s, f, k) {
  atomic {
    if
    :: seq > high[sender] ->
       high[sender] = seq;
       counted = counted + s + f;
       if
       :: !opened ->
          k = 0;
          do :: k < s -> push(0); k++ :: else -> break od;
          k = 0;
          do :: k < f -> push(1); k++ :: else -> break od;
#ifdef ADDED_SUMS
          sumCalls = sumCalls + s + f;
#else
          sumCalls = filled;
#endif
          sumFailures = ring[0] + ring[1];
          if
          :: sumCalls >= MIN && 2 * sumFailures >= sumCalls -> opened = 1
          :: else -> skip
          fi;
          /* The window as it is (its ring) crossed the threshold: the breaker must be open. */
          assert(!(filled >= MIN && 2 * (ring[0] + ring[1]) >= filled) || opened)
       :: else -> skip
       fi
    :: else -> skip   /* a copy of a batch already applied */
    fi;
    assert(counted <= made)
  }
}

proctype sender(byte me) {
  /* seq, successes, failures, and whether an earlier attempt of the batch may have run (it was kept) */
  chan requests = [2] of { byte, byte, byte, bit };
  /* the same, and the result: 1 ok, 0 failed (may have run), 2 failed and certainly not run */
  chan replies = [2] of { byte, byte, byte, bit, byte };
  byte made_here = 0;
  byte s = 0; byte f = 0;                          /* held, not in a batch yet */
  byte sequence = 0;
  byte outstanding = 0;
  /* A batch kept after a failed write (at most two with PIPELINED). */
  byte keptSeq[2]; byte keptS[2]; byte keptF[2]; byte kept = 0;
  byte seq; byte bs; byte bf; bit was; byte ok; byte k;

  do
  :: made_here < OUTCOMES ->
     atomic { if :: s++ :: f++ fi; made_here++; made++ }
  /* Write: a kept batch first (its number unchanged), else what is held. */
  :: (kept > 0
#ifndef PIPELINED
      && outstanding == 0
#endif
     ) ->
     atomic {
       seq = keptSeq[0]; bs = keptS[0]; bf = keptF[0];
       keptSeq[0] = keptSeq[1]; keptS[0] = keptS[1]; keptF[0] = keptF[1]; kept--;
       keptSeq[1] = 0; keptS[1] = 0; keptF[1] = 0;
       outstanding++;
       requests!seq, bs, bf, KEPT;
       seq = 0; bs = 0; bf = 0
     }
  :: (kept == 0 && s + f > 0 && sequence < MAXSEQ
#ifndef PIPELINED
      && outstanding == 0
#endif
     ) ->
     atomic { sequence++; outstanding++; requests!sequence, s, f, 0; s = 0; f = 0 }
  /* The connection: a write reaches Redis, or fails with Redis having run it, not run it, or running it later. */
  :: requests?seq, bs, bf, was ->
     if
     :: true -> apply(me, seq, bs, bf, k); replies!seq, bs, bf, was, 1
     :: true -> apply(me, seq, bs, bf, k); replies!seq, bs, bf, was, 0
     :: true -> replies!seq, bs, bf, was, 0
     :: nfull(ghosts) -> ghosts!me, seq, bs, bf; replies!seq, bs, bf, was, 0
     :: notRun < NOT_RUNS -> notRun++; replies!seq, bs, bf, was, 2
     fi;
     atomic { seq = 0; bs = 0; bf = 0; was = 0; k = 0 }
  :: replies?seq, bs, bf, was, ok ->
     /* The sender keeps each batch it wrote until the reply: the reply names it. */
     atomic {
       outstanding--;
       if
       :: ok == 1 -> skip
#if defined(MERGE_ANY_FAILURE)
       :: ok != 1 -> s = s + bs; f = f + bf
#else
#if defined(FORGET_EARLIER_ATTEMPTS)
       :: ok == 2 -> s = s + bs; f = f + bf
       :: ok == 0 ->
#else
       /* Not run, and no earlier attempt may have run: the number is given up, the outcomes held again. */
       :: ok == 2 && !was -> s = s + bs; f = f + bf
       :: ok == 0 || (ok == 2 && was) ->
#endif
          /* Keep it with its number, in number order, for the next write. */
          if
          :: kept == 0 -> keptSeq[0] = seq; keptS[0] = bs; keptF[0] = bf
          :: kept == 1 && keptSeq[0] < seq -> keptSeq[1] = seq; keptS[1] = bs; keptF[1] = bf
          :: kept == 1 && keptSeq[0] > seq ->
             keptSeq[1] = keptSeq[0]; keptS[1] = keptS[0]; keptF[1] = keptF[0];
             keptSeq[0] = seq; keptS[0] = bs; keptF[0] = bf
          fi;
          kept++
#endif
       fi;
       seq = 0; bs = 0; bf = 0; was = 0; ok = 0
     }
  :: made_here == OUTCOMES && s + f == 0 && kept == 0 && outstanding == 0 && empty(requests) && empty(replies) ->
     break
  od;
  finished++
}

/* Writes the frozen server runs later, at any moment. */
active proctype resumed() {
  byte who; byte seq; byte s; byte f; byte k;
  do
  :: ghosts?who, seq, s, f -> apply(who, seq, s, f, k); atomic { who = 0; seq = 0; s = 0; f = 0; k = 0 }
  :: finished == SENDERS && empty(ghosts) -> break
  od;
  /* Every sender is done and every write has run: each outcome counted exactly once. */
  assert(counted == made)
}

init {
  byte i = 0;
  atomic {
    do
    :: i < SENDERS -> run sender(i); i++
    :: else -> break
    od
  }
}
