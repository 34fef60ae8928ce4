/* moert: Mixture-of-Experts routing runtime. One include for the whole public API. */
#ifndef MOERT_H
#define MOERT_H

#include "moert/export.h"
#include "moert/status.h"
#include "moert/version.h"
#include "moert/cpu.h"
#include "moert/topk_gate.h"
#include "moert/plan.h"
#include "moert/router.h"
#include "moert/balancer.h"
#include "moert/gemm.h"
#include "moert/dispatch.h"
#include "moert/layer.h"

#endif /* MOERT_H */
