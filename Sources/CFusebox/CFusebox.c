// Everything in CFusebox is inline in include/CFusebox.h; SwiftPM wants one source file per C target.
#include "CFusebox.h"
