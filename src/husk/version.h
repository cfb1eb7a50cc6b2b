#pragma once
#ifndef HUSK_VERSION
#define HUSK_VERSION "0.1.0"
#endif
#define HUSK_OCI_SPEC_VERSION "1.0.2"
