#include "moert/version.h"

const char *moert_version(void) { return MOERT_VERSION_STRING; }
