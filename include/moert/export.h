/* moert: symbol visibility.
 *
 * The library is built with -fvisibility=hidden; only declarations marked MOERT_API are
 * exported from the shared object. Static builds and consumers see a plain declaration. */
#ifndef MOERT_EXPORT_H
#define MOERT_EXPORT_H

#if defined(MOERT_BUILDING_LIBRARY) && defined(__GNUC__)
#define MOERT_API __attribute__((visibility("default")))
#else
#define MOERT_API
#endif

#endif /* MOERT_EXPORT_H */
