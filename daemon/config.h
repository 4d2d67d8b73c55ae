#ifndef QD_CONFIG_H
#define QD_CONFIG_H
#endif
